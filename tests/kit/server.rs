//! A running `mosaic serve` (or `mosaic demo`): started, returned once it
//! printed its `listening on` lines, its stderr and stdout read line by
//! line, stopped with a signal (asserted delivered) or killed; dropping it
//! sends SIGTERM and waits (SIGKILL after a deadline).

use super::mosaic_cmd;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};
use testkit::{uri, NoLine, Running};

/// How long a server may take to print `listening on`.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a server may take to exit once told to.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How long [`Server::wait_log`] waits for a line.
pub const LOG_DEADLINE: Duration = Duration::from_secs(10);

pub struct Server {
    process: Running,
    /// Where it listens, as printed (`unix:/path`, `tcp:127.0.0.1:N`).
    pub addresses: Vec<String>,
}

/// A server that did not come up: its exit status and stderr.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Server {
    /// `mosaic serve MANIFESTS... --socket SOCK EXTRA...`; fails the test
    /// unless it comes up.
    #[track_caller]
    pub fn start(manifests: &[&Path], sock: &Path, extra: &[&str]) -> Server {
        match Server::try_start(manifests, sock, extra) {
            Ok(s) => s,
            Err(f) => panic!(
                "mosaic serve {manifests:?} --socket {} {extra:?} did not start ({}):\n{}",
                sock.display(),
                f.status,
                f.stderr
            ),
        }
    }

    /// Like [`Server::start`]; a server that exits instead is `Err`.
    #[track_caller]
    pub fn try_start(
        manifests: &[&Path],
        sock: &Path,
        extra: &[&str],
    ) -> Result<Server, StartFailure> {
        let mut a: Vec<OsString> = vec!["serve".into()];
        a.extend(manifests.iter().map(|m| m.as_os_str().to_owned()));
        a.push("--socket".into());
        a.push(sock.into());
        a.extend(extra.iter().map(OsString::from));
        let listeners = 1 + extra.iter().filter(|x| **x == "--listen").count();
        Server::spawn(mosaic_cmd(&a), listeners)
    }

    /// Spawns `cmd` and waits until its stderr has shown `listeners` lines
    /// starting with `listening on`; a process that exits first is `Err`.
    #[track_caller]
    pub fn spawn(mut cmd: Command, listeners: usize) -> Result<Server, StartFailure> {
        let process = Running::start(&mut cmd, false).on_drop("TERM", Duration::from_secs(20));
        let mut server = Server {
            process,
            addresses: Vec::new(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        let mut from = 0;
        while server.addresses.len() < listeners {
            let found =
                server
                    .process
                    .stderr
                    .wait_line(from, |l| l.starts_with("listening on "), deadline);
            match found {
                Ok((i, line)) => {
                    server
                        .addresses
                        .push(line["listening on ".len()..].to_owned());
                    from = i + 1;
                }
                Err(NoLine::Ended) => {
                    // stderr closed: the process is ending.
                    let status = server.wait_exit();
                    return Err(StartFailure {
                        status,
                        stderr: server.log(),
                    });
                }
                Err(NoLine::Deadline) => {
                    let log = server.log();
                    server.kill9();
                    panic!(
                        "{cmd:?} did not print `listening on` {listeners} times within \
                         {START_DEADLINE:?}; stderr:\n{log}"
                    );
                }
            }
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// stderr so far.
    pub fn log(&self) -> String {
        self.process.stderr.text()
    }

    /// Waits (up to [`LOG_DEADLINE`]) until a line of stderr contains
    /// `needle`; returns whether one did.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + LOG_DEADLINE;
        self.process.stderr.wait_for(needle, deadline).is_ok()
    }

    /// Waits (up to [`START_DEADLINE`]) for a line of stdout containing
    /// `marker` and returns every stdout line up to it; fails the test
    /// when none comes.
    #[track_caller]
    pub fn wait_stdout(&self, marker: &str) -> Vec<String> {
        let deadline = Instant::now() + START_DEADLINE;
        match self
            .process
            .stdout
            .wait_line(0, |l| l.contains(marker), deadline)
        {
            Ok((i, _)) => self.process.stdout.lines()[..=i].to_vec(),
            Err(why) => panic!(
                "no line with {marker:?} on stdout ({why}):\n{}",
                self.process.transcript()
            ),
        }
    }

    /// The socket of its first Unix listener.
    #[track_caller]
    pub fn socket(&self) -> PathBuf {
        self.addresses
            .iter()
            .find_map(|a| a.strip_prefix("unix:"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no Unix listener among {:?}", self.addresses))
    }

    /// The `nbd+unix://` URI of `export` on its first Unix listener.
    #[track_caller]
    pub fn uri(&self, export: &str) -> String {
        uri(&self.socket(), export)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.process.alive()
    }

    /// Waits for the process ([`STOP_DEADLINE`], then SIGKILL and a failed
    /// test) and for the ends of its output.
    #[track_caller]
    fn wait_exit(&mut self) -> ExitStatus {
        self.process.wait(STOP_DEADLINE).unwrap_or_else(|s| {
            panic!(
                "the server did not exit within {STOP_DEADLINE:?} (killed, {s}); stderr:\n{}",
                self.log()
            )
        })
    }

    /// Sends `sig` (TERM, INT...), which must be delivered, and waits;
    /// returns the exit status and the whole stderr.
    #[track_caller]
    pub fn stop_with(mut self, sig: &str) -> (ExitStatus, String) {
        self.process.signal(sig);
        let status = self.wait_exit();
        (status, self.log())
    }

    /// SIGTERM and wait; asserts exit code 0 and returns stderr.
    #[track_caller]
    pub fn stop(self) -> String {
        let (status, log) = self.stop_with("TERM");
        assert_eq!(
            status.code(),
            Some(0),
            "the server did not stop cleanly on SIGTERM ({status}); stderr:\n{log}"
        );
        log
    }

    /// SIGKILL and wait; returns stderr.
    #[track_caller]
    pub fn kill9(mut self) -> String {
        self.process.signal("KILL");
        self.wait_exit();
        self.log()
    }
}
