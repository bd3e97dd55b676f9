//! The detection runner: reads each service's series from the store ([`series`]), runs
//! [`crate::detect::detect`] over them, and caches the reports per service. A pass over every
//! service runs periodically while data arrives (a background task of `wattson-collector
//! serve`, [`run`]); `ListRegressions` refreshes what it asks for on demand when batches were
//! stored since (one service's pass when it names a service, so it never waits on the other
//! services of the host), so late or backfilled data is always covered. A pass stops between
//! services once the detector is cancelled ([`Detector::cancel`], at shutdown).
//! [`service`] serves `wattson.v1.DetectionService`.
//!
//! Settings come from the `[detect]` table of the collector's `--config` file
//! ([`load_config`]), with `[detect.services."NAME"]` overrides.

pub mod series;
pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use wattson_proto::v1::{
    FunnelStage, ListChangesRequest, ListChangesResponse, ListRegressionsRequest,
    ListRegressionsResponse, Regression,
};

use crate::attribute::FleetConfig;
use crate::changes::{ChangeError, Changes};
use crate::detect::{DetectConfig, DetectError, Report};
use crate::store::{Store, StoreError, Window};

/// Errors of the runner.
#[derive(Debug, thiserror::Error)]
pub enum DetectionError {
    /// The request is invalid (maps to INVALID_ARGUMENT).
    #[error("{0}")]
    Bad(String),
    /// The service asked for was never profiled (maps to NOT_FOUND, as in the query service).
    #[error(
        "service: unknown service {0:?} (no profile of it was ever stored; see `wattson power`)"
    )]
    UnknownService(String),
    /// The store failed (maps to UNAVAILABLE).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Detection refused its input or configuration.
    #[error("detection: {0}")]
    Detect(#[from] DetectError),
    /// Recording or listing changes failed.
    #[error(transparent)]
    Changes(#[from] ChangeError),
    /// The collector is stopping: the pass was abandoned (maps to UNAVAILABLE).
    #[error("detection cancelled: the collector is shutting down")]
    Cancelled,
    /// The config file could not be read or parsed.
    #[error("config file {path}: {why}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong (the key at fault, when one is).
        why: String,
    },
}

/// The collector's config file: a `[detect]` table (other tables are refused by name).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    detect: DetectConfig,
}

/// Reads the `[detect]` table of the TOML file at `path` and checks every value.
pub fn load_config(path: &Path) -> Result<DetectConfig, DetectionError> {
    let p = path.display().to_string();
    let bad = |why: String| DetectionError::Config {
        path: p.clone(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    file.detect.validate().map_err(|e| bad(e.to_string()))?;
    Ok(file.detect)
}

/// Counts batches stored since the collector started; ingest bumps it, detection compares it
/// with the count its last pass saw.
#[derive(Debug, Clone, Default)]
pub struct Arrivals(Arc<AtomicU64>);

impl Arrivals {
    /// A batch was stored.
    pub fn stored(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Services detected at once in a pass (at most; fewer on fewer cores): the SQLite store
/// reads from three connections.
const PASS_THREADS: usize = 3;

/// A service's last report.
#[derive(Debug, Clone)]
struct Fresh {
    /// Arrivals counted when its pass started.
    arrivals: u64,
    /// The pass's `now`.
    now: i64,
    report: Report,
}

/// What the passes found.
#[derive(Debug, Default)]
struct Cache {
    /// Arrivals and `now` of the last pass over every service (`None`: none yet).
    all: Option<(u64, i64)>,
    /// Per service.
    reports: BTreeMap<String, Fresh>,
}

/// Runs detection over a store and keeps the last pass's reports.
pub struct Detector {
    store: Arc<dyn Store>,
    fleet: FleetConfig,
    cfg: DetectConfig,
    changes: Changes,
    arrivals: Arrivals,
    cache: Mutex<Cache>,
    /// One pass over every service at a time; a caller that waited finds the cache fresh.
    passing: Mutex<()>,
    /// Set at shutdown: passes stop between services.
    cancelled: AtomicBool,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// A detector over `store`; `cfg` is checked ([`DetectConfig::validate`]).
    pub fn new(
        store: Arc<dyn Store>,
        fleet: FleetConfig,
        cfg: DetectConfig,
    ) -> Result<Detector, DetectionError> {
        cfg.validate()?;
        Ok(Detector {
            changes: Changes::new(store.clone()),
            store,
            fleet,
            cfg,
            arrivals: Arrivals::default(),
            cache: Mutex::default(),
            passing: Mutex::new(()),
            cancelled: AtomicBool::new(false),
        })
    }

    /// The counter ingest bumps for every stored batch.
    pub fn arrivals(&self) -> Arrivals {
        self.arrivals.clone()
    }

    /// Change events (recording, listing, automatic deploys).
    pub fn change_log(&self) -> &Changes {
        &self.changes
    }

    /// Stops every pass running now or later between two services (they return
    /// [`DetectionError::Cancelled`]); the collector calls it when asked to stop, so a long
    /// pass does not hold the shutdown.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn check_cancelled(&self) -> Result<(), DetectionError> {
        match self.cancelled.load(Ordering::Acquire) {
            true => Err(DetectionError::Cancelled),
            false => Ok(()),
        }
    }

    /// True when a pass as of (`arrivals`, `at`) is out of date at `now`: batches were stored
    /// here since, or a step has passed (collectors in front of one ClickHouse see only their
    /// own batches arrive, and a new bucket may complete a change).
    fn stale(&self, pass: Option<(u64, i64)>, now: i64) -> bool {
        pass.is_none_or(|(arrivals, at)| {
            arrivals != self.arrivals.count() || now - at >= self.cfg.step
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a pass over every service as of `now` unless no batch was stored here since the
    /// last one and it is less than a step old; services refreshed since by a pass of their
    /// own are kept. Returns whether it ran.
    pub fn refresh(&self, now: i64) -> Result<bool, DetectionError> {
        let _one = self.passing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.stale(self.cache().all, now) {
            return Ok(false);
        }
        let arrivals = self.arrivals.count();
        self.pass(now)?;
        self.cache().all = Some((arrivals, now));
        Ok(true)
    }

    /// Refreshes one service's report as of `now` when it is stale, without waiting for (or
    /// running) a pass over the others. A service never profiled is
    /// [`DetectionError::UnknownService`].
    pub fn refresh_service(&self, service: &str, now: i64) -> Result<bool, DetectionError> {
        let known = self
            .cache()
            .reports
            .get(service)
            .map(|f| (f.arrivals, f.now));
        if !self.stale(known, now) {
            return Ok(false);
        }
        if known.is_none() && !self.store.known_services()?.iter().any(|s| s == service) {
            return Err(DetectionError::UnknownService(service.to_string()));
        }
        self.changes.note_deploys(self.history(now))?;
        self.update(&[service.to_string()], now)?;
        Ok(true)
    }

    fn history(&self, now: i64) -> Window {
        Window {
            from: now - self.cfg.history,
            to: now + 60,
        }
    }

    /// Detection over every service as of `now`: records the deploys of builds first seen
    /// in the history, then refreshes each service's report (services gone from the store
    /// are forgotten).
    fn pass(&self, now: i64) -> Result<(), DetectionError> {
        let started = Instant::now();
        let deploys = self.changes.note_deploys(self.history(now))?;
        let services = self.store.known_services()?;
        let ran = self.update(&services, now)?;
        let mut cache = self.cache();
        cache
            .reports
            .retain(|s, _| services.binary_search(s).is_ok());
        let open: usize = (cache.reports.values())
            .map(|f| {
                (f.report.regressions.iter())
                    .filter(|g| g.status == "open")
                    .count()
            })
            .sum();
        let series: u64 = cache.reports.values().map(|f| f.report.series).sum();
        tracing::info!(
            services = services.len(),
            ran,
            series,
            open,
            deploys,
            ms = started.elapsed().as_millis() as u64,
            "detection pass"
        );
        Ok(())
    }

    /// Detects each stale service of `services` as of `now` and caches its report as soon as
    /// it is done; returns how many it detected.
    fn update(&self, services: &[String], now: i64) -> Result<usize, DetectionError> {
        let scales = series::fleet_scales(&*self.store, &self.fleet, now)?;
        let ran = each_service(services, |service| {
            let known = (self.cache().reports.get(service)).map(|f| (f.arrivals, f.now));
            if !self.stale(known, now) {
                return Ok(false);
            }
            let arrivals = self.arrivals.count();
            let report = self.report(service, &scales, now)?;
            let fresh = Fresh {
                arrivals,
                now,
                report,
            };
            self.cache().reports.insert(service.to_string(), fresh);
            Ok(true)
        })?;
        Ok(ran.into_iter().filter(|r| *r).count())
    }

    /// One report per service in `services`, as of `now`.
    fn reports(
        &self,
        services: &[String],
        now: i64,
    ) -> Result<BTreeMap<String, Report>, DetectionError> {
        let scales = series::fleet_scales(&*self.store, &self.fleet, now)?;
        let reports = each_service(services, |s| self.report(s, &scales, now))?;
        Ok(services.iter().cloned().zip(reports).collect())
    }

    /// `service`'s report as of `now` (unless the detector was cancelled).
    fn report(
        &self,
        service: &str,
        scales: &HashMap<String, f64>,
        now: i64,
    ) -> Result<Report, DetectionError> {
        self.check_cancelled()?;
        let cfg = self.cfg.for_service(service);
        let scale = scales.get(service).copied().unwrap_or(1.0);
        let s = series::read(&*self.store, service, &cfg, scale, now)?;
        let changes = self.changes.list(&ListChangesRequest {
            window: None,
            service: service.to_string(),
        })?;
        let stacks = series::StoreStacks(&*self.store);
        let report = crate::detect::detect(&s, &stacks, &changes.changes, &self.cfg, now)?;
        Ok(report)
    }

    /// Regressions whose change point is in the request's window (the analysis window up to
    /// now without one); a pass runs first when data arrived since the last one.
    pub fn regressions(
        &self,
        r: &ListRegressionsRequest,
    ) -> Result<ListRegressionsResponse, DetectionError> {
        self.regressions_at(r, crate::report::now())
    }

    /// [`Detector::regressions`] as of `now`. A request with its own `as_of_unix_seconds`, or
    /// with a window ending before the cached pass's analysis window, is detected as of that
    /// time (the window's end), uncached.
    pub fn regressions_at(
        &self,
        r: &ListRegressionsRequest,
        now: i64,
    ) -> Result<ListRegressionsResponse, DetectionError> {
        let as_of = match r.as_of_unix_seconds {
            0 => None,
            t if t < 0 || t > now + 60 => {
                return Err(DetectionError::Bad(format!(
                    "as_of_unix_seconds: {t} is not a time up to now ({now})"
                )));
            }
            t => Some(t),
        };
        let end = as_of.unwrap_or(now);
        let window = match &r.window {
            None => Window {
                from: end - self.cfg.analysis_window,
                to: end + 1,
            },
            Some(w) if w.to_unix_seconds < w.from_unix_seconds => {
                return Err(DetectionError::Bad(format!(
                    "window: reversed, from {} is after to {}",
                    w.from_unix_seconds, w.to_unix_seconds
                )));
            }
            Some(w) => Window {
                from: w.from_unix_seconds,
                to: w.to_unix_seconds,
            },
        };
        let past = (window.to < now - self.cfg.analysis_window).then_some(window.to);
        if let Some(at) = as_of.or(past) {
            // One full pass at a time, periodic or asked for: each one takes every core.
            let _one = self.passing.lock().unwrap_or_else(|p| p.into_inner());
            let mut services = self.store.known_services()?;
            services.retain(|s| r.service.is_empty() || *s == r.service);
            if !r.service.is_empty() && services.is_empty() {
                return Err(DetectionError::UnknownService(r.service.clone()));
            }
            self.changes.note_deploys(self.history(at))?;
            return Ok(answer(&self.reports(&services, at)?, window, r.all));
        }
        match r.service.as_str() {
            "" => self.refresh(now)?,
            one => self.refresh_service(one, now)?,
        };
        let cache = self.cache();
        if !r.service.is_empty() && !cache.reports.contains_key(&r.service) {
            return Err(DetectionError::UnknownService(r.service.clone()));
        }
        let picked =
            (cache.reports.iter()).filter(|(s, _)| r.service.is_empty() || **s == r.service);
        let reports = picked.map(|(s, f)| (s.clone(), f.report.clone())).collect();
        Ok(answer(&reports, window, r.all))
    }

    /// Changes in the request's window.
    pub fn changes(&self, r: &ListChangesRequest) -> Result<ListChangesResponse, DetectionError> {
        Ok(self.changes.list(r)?)
    }

    /// Open regressions per service in the last pass (every service it covered, 0 included).
    pub fn open_by_service(&self) -> Vec<(String, u64)> {
        let cache = self.cache();
        (cache.reports.iter())
            .map(|(s, f)| {
                let open = (f.report.regressions.iter())
                    .filter(|g| g.status == "open")
                    .count();
                (s.clone(), open as u64)
            })
            .collect()
    }
}

/// `f` of each service, in the order of `services`, on up to [`PASS_THREADS`] threads:
/// services are independent and the store reads from a pool of connections. The first
/// error is returned; the other threads stop before their next service.
fn each_service<T: Send>(
    services: &[String],
    f: impl Fn(&str) -> Result<T, DetectionError> + Sync,
) -> Result<Vec<T>, DetectionError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, PASS_THREADS)
        .min(services.len());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done: Mutex<Vec<Option<Result<T, DetectionError>>>> =
        Mutex::new(services.iter().map(|_| None).collect());
    let work = || {
        while !failed.load(Ordering::Acquire) {
            let i = next.fetch_add(1, Ordering::AcqRel);
            let Some(service) = services.get(i) else {
                return;
            };
            let out = f(service);
            if out.is_err() {
                failed.store(true, Ordering::Release);
            }
            done.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(out);
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(work);
        }
        work();
    });
    let done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    // Any error wins over the services that were not reached because of it.
    let mut out = Vec::with_capacity(done.len());
    let mut first_err = None;
    for r in done {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The response for `window` from per-service reports: regressions started in the window
/// (only open ones unless `all`), biggest first; funnel stages summed over services; series
/// summed; the notes of services that reported nothing.
fn answer(reports: &BTreeMap<String, Report>, w: Window, all: bool) -> ListRegressionsResponse {
    let mut regressions: Vec<Regression> = (reports.values())
        .flat_map(|r| r.regressions.iter())
        .filter(|g| all || g.status == "open")
        .filter(|g| g.started_unix_seconds >= w.from && g.started_unix_seconds < w.to)
        .cloned()
        .collect();
    let rank = |s: &str| match s {
        "open" => 0,
        "improvement" => 1,
        _ => 2,
    };
    regressions.sort_by(|a, b| {
        (rank(&a.status).cmp(&rank(&b.status)))
            .then(
                b.fleet_delta_watts
                    .abs()
                    .total_cmp(&a.fleet_delta_watts.abs()),
            )
            .then(b.delta_share.abs().total_cmp(&a.delta_share.abs()))
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut stages: Vec<FunnelStage> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for f in reports.values().flat_map(|r| r.funnel.iter()) {
        match at.get(&f.stage) {
            Some(&i) => {
                stages[i].candidates_in += f.candidates_in;
                stages[i].removed += f.removed;
            }
            None => {
                at.insert(f.stage.clone(), stages.len());
                stages.push(f.clone());
            }
        }
    }
    let series = reports.values().map(|r| r.series).sum();
    let note = if reports.is_empty() {
        "no profiles stored yet: nothing to detect".to_string()
    } else {
        notes(reports)
    };
    ListRegressionsResponse {
        regressions,
        funnel: stages,
        series,
        note,
    }
}

/// The services' notes, one line per distinct note (services' names are taken out of it):
/// `api: history too short: ...`, or `24 services (a, b, c, d, e, ...): ...`.
fn notes(reports: &BTreeMap<String, Report>) -> String {
    let mut by_note: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (s, r) in reports.iter().filter(|(_, r)| !r.note.is_empty()) {
        by_note
            .entry(r.note.replace(s.as_str(), "SERVICE"))
            .or_default()
            .push(s);
    }
    const NAMES: usize = 5;
    (by_note.into_iter())
        .map(|(note, services)| match services.as_slice() {
            [one] => format!("{one}: {}", note.replace("SERVICE", one)),
            many => {
                let more = if many.len() > NAMES { ", ..." } else { "" };
                let names = many[..many.len().min(NAMES)].join(", ");
                format!("{} services ({names}{more}): {note}", many.len())
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs a pass every `every` while batches arrive, until the task is dropped.
pub async fn run(detector: Arc<Detector>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let d = detector.clone();
        let done = tokio::task::spawn_blocking(move || d.refresh(crate::report::now())).await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(DetectionError::Cancelled)) => return,
            Ok(Err(e)) => tracing::warn!(error = %e, "detection pass failed; retrying next tick"),
            Err(e) => tracing::warn!(error = %e, "detection pass task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_in_parallel_keep_their_order_and_the_first_error_wins() {
        let services: Vec<String> = (0..40).map(|i| format!("s{i:02}")).collect();
        let out = each_service(&services, |s| Ok(s.to_uppercase())).unwrap();
        assert_eq!(
            out,
            services
                .iter()
                .map(|s| s.to_uppercase())
                .collect::<Vec<_>>()
        );
        let err = each_service(&services, |s| match s {
            "s07" => Err(DetectionError::Bad(format!("bad {s}"))),
            _ => Ok(()),
        });
        assert!(matches!(err, Err(DetectionError::Bad(m)) if m == "bad s07"));
        assert!(
            each_service::<()>(&[], |_| unreachable!())
                .unwrap()
                .is_empty()
        );
    }

    fn load(text: &str) -> Result<DetectConfig, DetectionError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("collector.toml");
        std::fs::write(&p, text).unwrap();
        load_config(&p)
    }

    #[test]
    fn config_file_sets_detect_and_per_service_keys_and_names_bad_ones() {
        let c = load(
            "[detect]\nstep = \"10m\"\nalpha = 0.001\n[detect.services.\"api\"]\nmin_rel_change = 0.02\n",
        )
        .unwrap();
        assert_eq!((c.step, c.alpha), (600, 0.001));
        assert_eq!(c.for_service("api").min_rel_change, 0.02);
        assert_eq!(c.for_service("db").min_rel_change, c.min_rel_change);
        assert_eq!(load("").unwrap(), DetectConfig::default());
        for (text, names) in [
            ("[detect]\nalpha = 1.5\n", "detect.alpha"),
            ("[detect]\nalpah = 0.1\n", "alpah"),
            ("[detekt]\n", "detekt"),
            (
                "[detect.services.\"api\"]\nalpha = -1.0\n",
                "detect.services.\"api\"",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(
                e.contains(names) && e.contains("collector.toml"),
                "{text}: {e}"
            );
        }
        let missing = load_config(Path::new("/nonexistent/collector.toml")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/collector.toml"));
    }
}

#[cfg(test)]
mod readme {
    /// The README's example config file loads, and its defaults are the real ones.
    #[test]
    fn readme_config_example_loads_with_the_defaults_it_shows() {
        let readme = include_str!("../../README.md");
        let at = readme
            .find("```toml\n[detect]")
            .expect("README shows a [detect] example");
        let body = &readme[at + 8..];
        let toml_text = &body[..body.find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("collector.toml");
        std::fs::write(&p, toml_text).unwrap();
        let cfg = super::load_config(&p).unwrap();
        let defaults = super::DetectConfig {
            services: cfg.services.clone(),
            ..super::DetectConfig::default()
        };
        assert_eq!(
            cfg, defaults,
            "the README's [detect] values are not the defaults"
        );
        assert!(
            !cfg.services.is_empty(),
            "the example shows a per-service override"
        );
        let (name, _) = cfg.services.iter().next().unwrap();
        assert_ne!(cfg.for_service(name), cfg.for_service("no such service"));
    }
}

impl From<DetectionError> for crate::analysis::ToolError {
    fn from(e: DetectionError) -> Self {
        use crate::analysis::ToolError;
        match e {
            DetectionError::Bad(_)
            | DetectionError::UnknownService(_)
            | DetectionError::Changes(ChangeError::Invalid { .. }) => {
                ToolError::BadRequest(e.to_string())
            }
            e => ToolError::Internal(e.to_string()),
        }
    }
}

/// Skills, gRPC and MCP reach regressions and changes through the tool interface.
impl crate::analysis::DetectionSource for Detector {
    fn regressions(
        &self,
        r: &ListRegressionsRequest,
    ) -> Result<ListRegressionsResponse, crate::analysis::ToolError> {
        Ok(Detector::regressions(self, r)?)
    }

    fn changes(
        &self,
        r: &ListChangesRequest,
    ) -> Result<ListChangesResponse, crate::analysis::ToolError> {
        Ok(Detector::changes(self, r)?)
    }
}
