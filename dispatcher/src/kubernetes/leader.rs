//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! An operator runs two dispatcher replicas so that losing a node does not stop dispatching, but
//! two dispatchers acting at once would race on the same proofs. The replica that holds the Lease
//! reconciles; the others poll it and take over once its holder stops renewing. Every write is a
//! replace with the Lease's resourceVersion, so of two candidates only one can win, and the
//! expiry of another's Lease is judged by how long *we* have seen it unchanged (our clock only),
//! as client-go does, so clock skew between nodes cannot hand the Lease to two holders.
//!
//! The holder gives up (and the process exits, to be restarted as a candidate) when it cannot
//! renew within `renew_deadline`, which is shorter than the Lease's duration: it stops acting
//! before any other replica may consider the Lease free.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    api::{Api, PostParams},
    Client,
};
use tokio::{sync::watch, task::JoinHandle};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Who we are in `holderIdentity`: the pod name plus the process id.
    pub identity: String,
    /// How long a Lease that is not renewed stays held.
    pub duration: Duration,
}

impl LeaseSettings {
    pub fn renew_every(&self) -> Duration {
        self.duration / 5
    }

    /// Give up leadership when the last successful renewal is older than this.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    pub fn retry_every(&self) -> Duration {
        self.duration / 7
    }
}

/// `HOSTNAME` (the pod name on Kubernetes) and the process id: unique per replica and per run.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dispatcher".to_string());
    format!("{host}_{}", std::process::id())
}

/// What a candidate does with the Lease as it finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// We hold it: renew.
    Renew,
    /// Free, or its holder stopped renewing: take it (a new holder, one more transition).
    Take,
    /// Someone else holds it and renewed recently.
    Wait,
}

/// The last version of another holder's Lease we saw, and since when it has not changed.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    seen: Option<(String, Instant)>,
}

impl Observation {
    /// How long the Lease has looked exactly like `record` (0 when it just changed).
    fn unchanged_for(&mut self, record: String, now: Instant) -> Duration {
        match &self.seen {
            Some((last, since)) if *last == record => now.duration_since(*since),
            _ => {
                self.seen = Some((record, now));
                Duration::ZERO
            }
        }
    }
}

/// Decides from the Lease as read. Pure: `now` is a parameter.
pub fn verdict(spec: &LeaseSpec, me: &str, observation: &mut Observation, now: Instant, our_duration: Duration) -> Verdict {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Verdict::Renew;
    }
    if holder.is_empty() {
        return Verdict::Take;
    }
    let record = format!("{holder}|{:?}|{:?}", spec.renew_time.as_ref().map(|t| t.0), spec.lease_duration_seconds);
    let duration = spec.lease_duration_seconds.map(|s| Duration::from_secs(s.max(1) as u64)).unwrap_or(our_duration);
    if observation.unchanged_for(record, now) > duration {
        Verdict::Take
    } else {
        Verdict::Wait
    }
}

/// Held leadership: renewed in the background until released or lost.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    renewer: JoinHandle<()>,
    api: Api<Lease>,
    settings: LeaseSettings,
}

/// Waits until this replica holds the Lease, or `stop` fires (then `None`).
pub async fn acquire(client: Client, settings: LeaseSettings, stop: &mut watch::Receiver<bool>) -> Result<Option<Leadership>> {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observation = Observation::default();
    let mut waiting_logged = false;
    loop {
        match try_hold(&api, &settings, &mut observation).await {
            Ok(Some(holder)) if holder == settings.identity => break,
            Ok(holder) => {
                if !waiting_logged {
                    tracing::info!(lease = %settings.name, holder = holder.as_deref().unwrap_or("-"), "standing by: another dispatcher holds the Lease");
                    waiting_logged = true;
                }
            }
            Err(e) => tracing::warn!(lease = %settings.name, error = %format!("{e:#}"), "could not read or take the Lease; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.retry_every()) => {}
            _ = stop.changed() => return Ok(None),
        }
    }
    tracing::info!(lease = %settings.name, identity = %settings.identity, "leading: this dispatcher holds the Lease");
    let (lost_tx, lost) = watch::channel(false);
    let renewer = tokio::spawn(renew_until_lost(api.clone(), settings.clone(), lost_tx));
    Ok(Some(Leadership { lost, renewer, api, settings }))
}

impl Leadership {
    /// Resolves when the Lease could not be renewed in time (or someone else took it).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|l| *l).await;
    }

    /// Stops renewing and frees the Lease, so a standby takes over at its next poll instead of
    /// waiting out the Lease's duration.
    pub async fn release(self) {
        self.renewer.abort();
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else { return Ok(()) };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api.replace(&self.settings.name, &PostParams::default(), &lease).await.map(|_| ())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(lease = %self.settings.name, "released the Lease"),
            Err(e) => tracing::warn!(lease = %self.settings.name, error = %e, "could not release the Lease; it expires on its own"),
        }
    }
}

async fn renew_until_lost(api: Api<Lease>, settings: LeaseSettings, lost: watch::Sender<bool>) {
    let mut last_renewed = Instant::now();
    let mut observation = Observation::default();
    loop {
        tokio::time::sleep(settings.renew_every()).await;
        match try_hold(&api, &settings, &mut observation).await {
            Ok(Some(holder)) if holder == settings.identity => last_renewed = Instant::now(),
            Ok(holder) => {
                tracing::error!(lease = %settings.name, holder = holder.as_deref().unwrap_or("-"), "another dispatcher took the Lease");
                let _ = lost.send(true);
                return;
            }
            Err(e) => tracing::warn!(lease = %settings.name, error = %format!("{e:#}"), "renewing the Lease failed; retrying"),
        }
        if last_renewed.elapsed() > settings.renew_deadline() {
            tracing::error!(lease = %settings.name, deadline = ?settings.renew_deadline(), "could not renew the Lease in time");
            let _ = lost.send(true);
            return;
        }
    }
}

/// One attempt: reads the Lease and renews or takes it when the verdict says so. Returns the
/// holder afterwards. A write that loses a race (409) leaves the other writer as holder.
async fn try_hold(api: &Api<Lease>, settings: &LeaseSettings, observation: &mut Observation) -> Result<Option<String>> {
    let now = MicroTime(Timestamp::now());
    let seconds = settings.duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&settings.name).await.context("reading the Lease")? else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(settings.name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Some(settings.identity.clone())),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(e).context("creating the Lease"),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    match verdict(spec, &settings.identity, observation, Instant::now(), settings.duration) {
        Verdict::Wait => return Ok(spec.holder_identity.clone()),
        Verdict::Renew => spec.renew_time = Some(now),
        Verdict::Take => {
            spec.holder_identity = Some(settings.identity.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
        }
    }
    spec.lease_duration_seconds = Some(seconds);
    match api.replace(&settings.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Some(settings.identity.clone())),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e).context("writing the Lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renew_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renew_secs).unwrap())),
            ..Default::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn our_own_lease_is_renewed_and_a_free_one_taken() {
        let mut o = Observation::default();
        let now = Instant::now();
        assert_eq!(verdict(&spec(Some("me"), 1), "me", &mut o, now, D), Verdict::Renew);
        assert_eq!(verdict(&spec(None, 1), "me", &mut o, now, D), Verdict::Take);
        assert_eq!(verdict(&spec(Some(""), 1), "me", &mut o, now, D), Verdict::Take);
    }

    #[test]
    fn another_holder_is_waited_out_by_our_own_clock() {
        let mut o = Observation::default();
        let t0 = Instant::now();
        // Its renewTime may be far in the past by our wall clock (skew): only the time we have
        // seen it unchanged counts.
        assert_eq!(verdict(&spec(Some("other"), 1), "me", &mut o, t0, D), Verdict::Wait);
        assert_eq!(verdict(&spec(Some("other"), 1), "me", &mut o, t0 + Duration::from_secs(14), D), Verdict::Wait);
        assert_eq!(verdict(&spec(Some("other"), 1), "me", &mut o, t0 + Duration::from_secs(16), D), Verdict::Take);
    }

    #[test]
    fn a_renewal_restarts_the_wait() {
        let mut o = Observation::default();
        let t0 = Instant::now();
        assert_eq!(verdict(&spec(Some("other"), 1), "me", &mut o, t0, D), Verdict::Wait);
        assert_eq!(verdict(&spec(Some("other"), 2), "me", &mut o, t0 + Duration::from_secs(10), D), Verdict::Wait);
        assert_eq!(verdict(&spec(Some("other"), 2), "me", &mut o, t0 + Duration::from_secs(20), D), Verdict::Wait);
        assert_eq!(verdict(&spec(Some("other"), 2), "me", &mut o, t0 + Duration::from_secs(26), D), Verdict::Take);
    }

    #[test]
    fn the_holders_own_duration_counts() {
        let mut o = Observation::default();
        let t0 = Instant::now();
        let released = LeaseSpec { lease_duration_seconds: Some(1), ..spec(Some("other"), 1) };
        assert_eq!(verdict(&released, "me", &mut o, t0, D), Verdict::Wait);
        assert_eq!(verdict(&released, "me", &mut o, t0 + Duration::from_secs(2), D), Verdict::Take);
    }

    #[test]
    fn the_holder_stops_before_anyone_may_take_over() {
        let s = LeaseSettings { namespace: "n".into(), name: "l".into(), identity: "me".into(), duration: D };
        assert!(s.renew_deadline() < s.duration);
        assert!(s.renew_every() * 2 < s.renew_deadline(), "at least two renewal attempts before giving up");
    }
}
