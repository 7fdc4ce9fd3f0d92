//! The fault injector: from the seeded generator, one fault after another at random moments of
//! the fault phase — SIGKILL of the relay or an agent (then a restart), SIGSTOP/SIGCONT of the
//! relay or an agent (some pauses longer than the lease), the DC halted and restarted, the DC
//! paused (SIGSTOP of every samba process) for longer than the lease. Every fault is undone
//! before the next one starts, and [`heal`] undoes whatever is left at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;

use crate::deployment::Deployment;
use crate::directory::DcControl;
use crate::processes::Service;
use crate::workload::Progress;

/// What the injector does and what it counted.
#[derive(Debug)]
pub(crate) struct Injector {
    rng: StdRng,
    lease: Duration,
    mean_gap: Duration,
    started: Instant,
    /// Faults by kind.
    pub(crate) counts: BTreeMap<&'static str, u32>,
}

impl Injector {
    pub(crate) fn new(seed: u64, lease: Duration, mean_gap: Duration, started: Instant) -> Self {
        // A stream of its own, apart from the workers' (seeded by account).
        Self { rng: StdRng::seed_from_u64(seed ^ 0xFA17_5EED), lease, mean_gap, started, counts: BTreeMap::new() }
    }

    fn count(&mut self, kind: &'static str) {
        *self.counts.entry(kind).or_default() += 1;
    }

    pub(crate) fn total(&self) -> u32 {
        self.counts.values().sum()
    }

    /// A pause: short (under the lease) a third of the time, else 1.2-2.5 leases.
    fn pause_length(&mut self) -> Duration {
        if self.rng.random_bool(1.0 / 3.0) {
            self.lease.mul_f64(self.rng.random_range(0.2..0.9))
        } else {
            self.lease.mul_f64(self.rng.random_range(1.2..2.5))
        }
    }

    fn log(&self, progress: &Progress, text: &str) {
        println!("[{:>6.1}s] {text} | {}", self.started.elapsed().as_secs_f64(), progress.line());
    }

    /// Injects faults until `until`, at moments `mean_gap` apart on average; a fault lasts for a
    /// while (a pause, a process or the DC down) and may overlap with faults of other targets,
    /// never with another of the same target.
    pub(crate) async fn run(
        &mut self,
        deployment: &mut Deployment,
        dc: &mut DcControl,
        progress: &Arc<Progress>,
        until: Instant,
    ) {
        let mut pending: Vec<(Instant, Target, Undo)> = Vec::new();
        let mut next_fault = Instant::now() + self.gap();
        loop {
            let next_undo = pending.iter().map(|p| p.0).min();
            let wake = next_undo.map_or(next_fault, |u| u.min(next_fault));
            if next_undo.is_none() && next_fault >= until {
                break;
            }
            tokio::time::sleep_until(wake).await;
            let now = Instant::now();
            // Undo what is due.
            let (due, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(|p| p.0 <= now);
            pending = rest;
            for (_, target, undo) in due {
                self.undo(deployment, dc, target, undo).await;
            }
            if next_fault <= now && next_fault < until {
                next_fault = now + self.gap();
                let busy: Vec<Target> = pending.iter().map(|p| p.1).collect();
                if let Some((target, undo, lasting)) = self.inject(deployment, dc, progress, &busy).await {
                    pending.push((Instant::now() + lasting, target, undo));
                }
            }
            // A process that died by itself is started again (and counted).
            for service in deployment.services() {
                if service.is_started() && !service.check_alive() {
                    self.log(progress, &format!("{} was not running; starting it", service.name));
                    service.start();
                }
            }
        }
    }

    fn gap(&mut self) -> Duration {
        self.mean_gap.mul_f64(self.rng.random_range(0.2..1.8))
    }

    /// Picks and starts one fault on a target not in `busy`; what undoes it and when.
    async fn inject(
        &mut self,
        deployment: &mut Deployment,
        dc: &mut DcControl,
        progress: &Progress,
        busy: &[Target],
    ) -> Option<(Target, Undo, Duration)> {
        let agents = deployment.agents.len();
        let n = self.total() + 1;
        let roll = self.rng.random_range(0..100);
        let agent = self.rng.random_range(0..agents);
        let relay = self.rng.random_range(0..deployment.relays.len());
        let target = match roll {
            0..14 | 30..44 => Target::Relay(relay),
            14..30 | 44..70 => Target::Agent(agent),
            _ => Target::Dc,
        };
        if busy.contains(&target) {
            return None;
        }
        let name = |t: Target| match t {
            Target::Relay(i) => deployment.relays[i].service.name.clone(),
            Target::Agent(i) => deployment.agents[i].service.name.clone(),
            Target::Dc => "DC".to_owned(),
        };
        let label = name(target);
        let fault = match roll {
            // SIGKILL, down for up to 2 s, restarted.
            0..30 => {
                let down = Duration::from_secs_f64(self.rng.random_range(0.0..2.0));
                self.log(progress, &format!("fault {n}: SIGKILL {label}, restart in {:.1}s", down.as_secs_f64()));
                self.service(deployment, target).kill();
                self.count(if matches!(target, Target::Relay(_)) {
                    "SIGKILL relay + restart"
                } else {
                    "SIGKILL agent + restart"
                });
                (target, Undo::Start, down)
            }
            // SIGSTOP of an agent the moment it has started a job (its audit log shows the job
            // received and nothing after), for longer than the lease: the job goes to the other
            // agent meanwhile.
            44..57 => {
                let pause = self.lease.mul_f64(self.rng.random_range(1.5..3.0));
                let audit = deployment.agents[agent].state_dir().join("audit.jsonl");
                let caught = wait_for_open_job(&audit, Duration::from_secs(3)).await;
                self.log(
                    progress,
                    &format!(
                        "fault {n}: SIGSTOP {label} for {:.1}s, {}",
                        pause.as_secs_f64(),
                        if caught { "as it started a job" } else { "(no job started within 3 s)" }
                    ),
                );
                self.service(deployment, target).pause();
                self.count(if caught { "SIGSTOP agent mid-job > lease" } else { "SIGSTOP agent > lease" });
                (target, Undo::Resume, pause)
            }
            // SIGSTOP, SIGCONT after the pause.
            30..70 => {
                let pause = self.pause_length();
                let longer = pause > self.lease;
                self.log(progress, &format!("fault {n}: SIGSTOP {label} for {:.1}s", pause.as_secs_f64()));
                self.service(deployment, target).pause();
                self.count(match (target, longer) {
                    (Target::Relay(_), true) => "SIGSTOP relay > lease",
                    (Target::Relay(_), false) => "SIGSTOP relay < lease",
                    (_, true) => "SIGSTOP agent > lease",
                    (_, false) => "SIGSTOP agent < lease",
                });
                (target, Undo::Resume, pause)
            }
            // The DC halted, down for 1-8 s, restarted (directory kept).
            70..82 => {
                let down = Duration::from_secs_f64(self.rng.random_range(1.0..8.0));
                self.log(progress, &format!("fault {n}: DC halted, restart in {:.1}s", down.as_secs_f64()));
                dc.halt().await;
                self.count("DC halt + restart");
                (target, Undo::Start, down)
            }
            // The DC paused (every samba process stopped).
            _ => {
                let pause = self.pause_length();
                self.log(progress, &format!("fault {n}: DC paused for {:.1}s", pause.as_secs_f64()));
                dc.pause().await;
                self.count(if pause > self.lease { "DC paused > lease" } else { "DC paused < lease" });
                (target, Undo::Resume, pause)
            }
        };
        Some(fault)
    }

    fn service<'d>(&self, deployment: &'d mut Deployment, target: Target) -> &'d mut Service {
        match target {
            Target::Agent(i) => &mut deployment.agents[i].service,
            Target::Relay(i) => &mut deployment.relays[i].service,
            Target::Dc => &mut deployment.relays[0].service,
        }
    }

    async fn undo(&mut self, deployment: &mut Deployment, dc: &mut DcControl, target: Target, undo: Undo) {
        match (target, undo) {
            (Target::Dc, Undo::Resume) => dc.resume().await,
            (Target::Dc, Undo::Start) => dc.restart().await,
            (_, Undo::Resume) => self.service(deployment, target).resume(),
            (_, Undo::Start) => self.service(deployment, target).start(),
        }
    }
}

/// What a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// A relay replica, by index.
    Relay(usize),
    Agent(usize),
    Dc,
}

/// How a fault ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// SIGCONT (or `samba-dc.sh resume`).
    Resume,
    /// Start the killed process again (or `samba-dc.sh restart`).
    Start,
}

/// Waits (at most `limit`) until the audit log at `path` gains a `job_received` event whose job
/// has no later event yet: the agent is carrying that job out. Whether one came.
async fn wait_for_open_job(path: &std::path::Path, limit: Duration) -> bool {
    let start = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(bytes) = std::fs::read(path) {
            let new = bytes.get(usize::try_from(start).unwrap_or(usize::MAX)..).unwrap_or_default();
            let mut open: Vec<String> = Vec::new();
            for line in String::from_utf8_lossy(new).lines() {
                let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let job = event["job_id"].as_str().unwrap_or_default().to_owned();
                if event["event_id"] == 4100 {
                    open.push(job);
                } else {
                    open.retain(|j| *j != job);
                }
            }
            if !open.is_empty() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
pub(crate) async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Undoes every fault: the DC running, every process resumed or started again.
pub(crate) async fn heal(deployment: &mut Deployment, dc: &mut DcControl) {
    dc.heal().await;
    deployment.heal();
}
