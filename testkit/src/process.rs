//! Processes a test started: signals, waiting with a deadline, and their
//! output read line by line.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

fn signal_number(name: &str) -> libc::c_int {
    match name.trim_start_matches("SIG") {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        other => panic!("unknown signal name {other:?}"),
    }
}

/// Sends signal `name` ("TERM", "INT", "KILL", "HUP"...) to `pid`; the
/// error, when it could not be delivered (e.g. the process is gone).
pub fn try_signal(pid: u32, name: &str) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) has no memory effects in this process.
    if unsafe { libc::kill(pid, signal_number(name)) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends signal `name` to `pid`, failing the test unless it was delivered.
#[track_caller]
pub fn signal(pid: u32, name: &str) {
    if let Err(e) = try_signal(pid, name) {
        panic!("kill -{name} {pid}: {e}");
    }
}

/// Waits for `child` to exit. Past `limit` it is killed (SIGKILL) and
/// reaped: `Err` with the status it then had.
pub fn wait_within(mut child: Child, limit: Duration) -> Result<ExitStatus, ExitStatus> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(limit) {
        Ok(status) => Ok(status.expect("wait for a child process")),
        Err(_) => {
            // Not reaped yet (the waiter is blocked on it): still our pid.
            let _ = try_signal(pid, "KILL");
            Err(rx
                .recv()
                .expect("the waiter thread")
                .expect("wait for a child process"))
        }
    }
}

/// The lines a stream gave (lossy UTF-8, `\r` dropped), read by a thread of
/// their own, kept from the first, and waited on with deadlines.
pub struct Lines {
    rx: Receiver<String>,
    log: Vec<String>,
    closed: bool,
    /// Where [`Lines::next_line`] goes on.
    cursor: usize,
}

/// Why a wait on [`Lines`] ended without the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLine {
    /// The stream ended (the process closed it or exited).
    Ended,
    /// The deadline passed.
    Deadline,
}

impl std::fmt::Display for NoLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoLine::Ended => "the stream ended",
            NoLine::Deadline => "deadline passed",
        })
    }
}

impl Lines {
    /// Starts reading `r` on a thread; the lines arrive until end of file.
    pub fn read(r: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .replace('\r', "");
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Lines {
            rx,
            log: Vec::new(),
            closed: false,
            cursor: 0,
        }
    }

    /// Takes in the lines that arrived, without waiting.
    pub fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.log.push(l);
        }
    }

    /// Every line so far.
    pub fn lines(&mut self) -> &[String] {
        self.drain();
        &self.log
    }

    /// Every line so far, joined with newlines.
    pub fn text(&mut self) -> String {
        self.lines().join("\n")
    }

    /// Waits for one more line (or the end of the stream) until `deadline`.
    fn receive(&mut self, deadline: Instant) -> Result<(), NoLine> {
        if self.closed {
            return Err(NoLine::Ended);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(l) => {
                self.log.push(l);
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Err(NoLine::Deadline),
            Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                Err(NoLine::Ended)
            }
        }
    }

    /// The index of the first line at or after index `from` for which
    /// `wanted` holds, waiting for more lines until `deadline`.
    pub fn wait_line(
        &mut self,
        from: usize,
        wanted: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Result<usize, NoLine> {
        self.drain();
        let mut at = from;
        loop {
            if let Some(i) = self
                .log
                .get(at..)
                .and_then(|l| l.iter().position(|l| wanted(l)))
            {
                return Ok(at + i);
            }
            at = self.log.len().max(from);
            self.receive(deadline)?;
        }
    }

    /// The lines one by one: the line after the one this returned last
    /// (the first line at first), waiting for it until `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> Result<String, NoLine> {
        let i = self.wait_line(self.cursor, |_| true, deadline)?;
        self.cursor = i + 1;
        Ok(self.log[i].clone())
    }

    /// The first line (from the start) containing `marker`, waiting for it
    /// until `deadline`.
    pub fn wait_for(&mut self, marker: &str, deadline: Instant) -> Result<String, NoLine> {
        let i = self.wait_line(0, |l| l.contains(marker), deadline)?;
        Ok(self.log[i].clone())
    }

    /// Reads to the end of the stream; false when `deadline` came first.
    pub fn wait_closed(&mut self, deadline: Instant) -> bool {
        loop {
            match self.receive(deadline) {
                Ok(()) => {}
                Err(NoLine::Ended) => return true,
                Err(NoLine::Deadline) => return false,
            }
        }
    }
}
