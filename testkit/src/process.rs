//! Processes a test started: signals, waiting with a deadline, their
//! output read line by line ([`Lines`]), and a running process that is
//! stopped when dropped ([`Running`]).

use crate::tools::spawn;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
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
pub struct Lines(Mutex<Received>);

struct Received {
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

impl Received {
    /// Takes in the lines that arrived, without waiting.
    fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.log.push(l);
        }
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

    fn wait_line(
        &mut self,
        from: usize,
        wanted: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Result<usize, NoLine> {
        self.drain();
        let mut at = from;
        loop {
            let found = self
                .log
                .get(at..)
                .and_then(|l| l.iter().position(|l| wanted(l)));
            if let Some(i) = found {
                return Ok(at + i);
            }
            at = self.log.len().max(from);
            self.receive(deadline)?;
        }
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
        Lines(Mutex::new(Received {
            rx,
            log: Vec::new(),
            closed: false,
            cursor: 0,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Received> {
        // A panic elsewhere while holding it leaves the lines usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        let mut r = self.lock();
        r.drain();
        r.log.clone()
    }

    /// Every line so far, joined with newlines.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// The first line at or after index `from` for which `wanted` holds,
    /// waiting for more lines until `deadline`: (its index, the line).
    pub fn wait_line(
        &self,
        from: usize,
        wanted: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Result<(usize, String), NoLine> {
        let mut r = self.lock();
        let i = r.wait_line(from, wanted, deadline)?;
        Ok((i, r.log[i].clone()))
    }

    /// The lines one by one: the line after the one this returned last
    /// (the first line at first), waiting for it until `deadline`.
    pub fn next_line(&self, deadline: Instant) -> Result<String, NoLine> {
        let mut r = self.lock();
        let from = r.cursor;
        let i = r.wait_line(from, |_| true, deadline)?;
        r.cursor = i + 1;
        Ok(r.log[i].clone())
    }

    /// The first line (from the start) containing `marker`, waiting for it
    /// until `deadline`.
    pub fn wait_for(&self, marker: &str, deadline: Instant) -> Result<String, NoLine> {
        self.wait_line(0, |l| l.contains(marker), deadline)
            .map(|(_, l)| l)
    }

    /// Reads to the end of the stream; false when `deadline` came first.
    pub fn wait_closed(&self, deadline: Instant) -> bool {
        let mut r = self.lock();
        loop {
            match r.receive(deadline) {
                Ok(()) => {}
                Err(NoLine::Ended) => return true,
                Err(NoLine::Deadline) => return false,
            }
        }
    }
}

/// How long [`Running::wait`] waits for the output streams to end once
/// the process has exited (a child of it may hold them).
const STREAMS_DEADLINE: Duration = Duration::from_secs(10);

/// A process a test started, its stdout and stderr read line by line.
/// Dropping it sends its drop signal (SIGKILL unless [`Running::on_drop`]
/// says otherwise), tolerating a process already gone, and waits for it.
pub struct Running {
    child: Option<Child>,
    /// Its input, when [`Running::start`] was asked for a pipe.
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
    drop_signal: &'static str,
    drop_wait: Duration,
}

impl Running {
    /// Spawns `cmd` with stdout and stderr piped, and stdin piped when
    /// `input` (else no input). A program that is not installed fails the
    /// test naming its Debian package.
    #[track_caller]
    pub fn start(cmd: &mut Command, input: bool) -> Running {
        cmd.stdin(if input { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(cmd);
        let stdin = child.stdin.take();
        let stdout = Lines::read(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::read(child.stderr.take().expect("piped stderr"));
        Running {
            child: Some(child),
            stdin,
            stdout,
            stderr,
            drop_signal: "KILL",
            drop_wait: Duration::from_secs(10),
        }
    }

    /// Dropped while running, the process gets `signal` and `wait` to exit
    /// (then SIGKILL).
    pub fn on_drop(mut self, signal: &'static str, wait: Duration) -> Running {
        self.drop_signal = signal;
        self.drop_wait = wait;
        self
    }

    /// Its pid (fails the test once it has been waited for).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the process was waited for")
            .id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `name`, which must be delivered.
    #[track_caller]
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Waits for the process to exit and its output to end; past `limit`
    /// it is killed: `Err` with the status it then had.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus, ExitStatus> {
        let child = self.child.take().expect("the process was waited for");
        drop(self.stdin.take());
        let status = wait_within(child, limit);
        let deadline = Instant::now() + STREAMS_DEADLINE;
        self.stdout.wait_closed(deadline);
        self.stderr.wait_closed(deadline);
        status
    }

    /// stdout and stderr so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // Cleanup, possibly while a test is failing: the process may
            // have exited already, so a failed signal is fine here.
            let _ = try_signal(child.id(), self.drop_signal);
            let _ = wait_within(child, self.drop_wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_is_delivered_and_a_missing_process_is_an_error() {
        let mut r = Running::start(Command::new("sleep").arg("30"), false);
        assert!(r.alive());
        r.signal("TERM");
        let status = r.wait(Duration::from_secs(10)).expect("exits on SIGTERM");
        assert!(!status.success());
        // No process has a pid above the kernel's pid_max (at most 2^22).
        assert!(try_signal(NO_PID, "TERM").is_err());
    }

    /// A pid no process can have, so no test signals a stranger.
    const NO_PID: u32 = 1 << 30;

    #[test]
    #[should_panic(expected = "kill -TERM")]
    fn signal_asserts_delivery() {
        signal(NO_PID, "TERM");
    }

    #[test]
    fn lines_are_read_in_order_and_waited_for() {
        let r = Running::start(
            Command::new("sh").args(["-c", "echo one; echo two; echo 'three\r'"]),
            false,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(r.stdout.wait_for("two", deadline).as_deref(), Ok("two"));
        assert_eq!(r.stdout.next_line(deadline).as_deref(), Ok("one"));
        assert_eq!(r.stdout.next_line(deadline).as_deref(), Ok("two"));
        assert_eq!(r.stdout.next_line(deadline).as_deref(), Ok("three"));
        assert_eq!(r.stdout.next_line(deadline), Err(NoLine::Ended));
        assert_eq!(r.stdout.text(), "one\ntwo\nthree");
    }

    #[test]
    fn a_wait_past_its_limit_kills() {
        let child = Command::new("sleep").arg("30").spawn().expect("run sleep");
        let started = Instant::now();
        assert!(wait_within(child, Duration::from_millis(100)).is_err());
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
