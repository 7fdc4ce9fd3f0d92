//! The relay and agent processes: started from their real binaries, killed with SIGKILL, paused
//! with SIGSTOP and resumed with SIGCONT, restarted with the same configuration. Every start
//! appends to the same log file, so a process's whole history is in one place.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One long-running process of the deployment.
#[derive(Debug)]
pub(crate) struct Service {
    /// `relay`, `agent-1`, ...
    pub(crate) name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Starts, restarts included.
    pub(crate) starts: u32,
    /// Times the process was found gone without the harness having killed it.
    pub(crate) unexpected_exits: u32,
}

impl Service {
    pub(crate) fn new(name: &str, program: &Path, args: &[&str], log: &Path) -> Self {
        Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log: log.to_owned(),
            child: None,
            paused: false,
            starts: 0,
            unexpected_exits: 0,
        }
    }

    /// The log file every start of this process appends to.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// Starts the process (it must not be running).
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open the log {}: {e}", self.log.display()));
        let err = log.try_clone().expect("the log file handle can be duplicated");
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({}): {e}", self.name, self.program.display()));
        self.child = Some(child);
        self.paused = false;
        self.starts += 1;
    }

    /// SIGKILL, and reaps the process (a paused process dies as well).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                eprintln!("warning: kill -{signal} {} ({}) failed: {status:?}", child.id(), self.name);
            }
        }
    }

    /// SIGSTOP: the process keeps its sockets open and answers nothing.
    pub(crate) fn pause(&mut self) {
        if self.child.is_some() && !self.paused {
            self.signal("STOP");
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub(crate) fn resume(&mut self) {
        if self.paused {
            self.signal("CONT");
            self.paused = false;
        }
    }

    /// Whether the harness started the process and has not killed it since.
    pub(crate) fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process is running (not exited). A process found gone that the harness did not
    /// kill counts as an unexpected exit and is forgotten, so [`Service::heal`] starts it again.
    pub(crate) fn check_alive(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else { return false };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                eprintln!("!! {} exited by itself: {status}; see {}", self.name, self.log.display());
                self.unexpected_exits += 1;
                self.child = None;
                false
            }
            Err(e) => panic!("cannot poll {}: {e}", self.name),
        }
    }

    /// Resumes a paused process, starts a stopped or crashed one.
    pub(crate) fn heal(&mut self) {
        self.resume();
        if !self.check_alive() {
            self.start();
        }
    }

    /// SIGTERM (a graceful stop) and waits up to `limit` for the exit; SIGKILL after that.
    pub(crate) fn stop(&mut self, limit: std::time::Duration) {
        self.resume();
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("warning: {} did not stop within {limit:?} of SIGTERM; killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Never leave a process behind, whatever happened to the test.
        self.kill();
    }
}
