//! The detection runner: reads each service's series from the store ([`series`]), runs
//! [`crate::detect::detect`] over them, and caches the reports. A pass runs periodically while
//! data arrives (a background task of `wattson-collector serve`, [`run`]) and on demand when
//! `ListRegressions` is asked after batches were stored since the last pass, so late or
//! backfilled data is always covered. [`service`] serves `wattson.v1.DetectionService`.
//!
//! Settings come from the `[detect]` table of the collector's `--config` file
//! ([`load_config`]), with `[detect.services."NAME"]` overrides.

pub mod series;
pub mod service;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The store failed (maps to UNAVAILABLE).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Detection refused its input or configuration.
    #[error("detection: {0}")]
    Detect(#[from] DetectError),
    /// Recording or listing changes failed.
    #[error(transparent)]
    Changes(#[from] ChangeError),
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

/// What the last pass found.
#[derive(Debug, Default)]
struct Cache {
    /// Arrivals counted when the pass started (`None`: no pass yet).
    arrivals: Option<u64>,
    /// The pass's `now`.
    now: i64,
    /// Per service.
    reports: BTreeMap<String, Report>,
}

/// Runs detection over a store and keeps the last pass's reports.
pub struct Detector {
    store: Arc<dyn Store>,
    fleet: FleetConfig,
    cfg: DetectConfig,
    changes: Changes,
    arrivals: Arrivals,
    cache: Mutex<Cache>,
    /// One pass at a time; a caller that waited finds the cache fresh.
    passing: Mutex<()>,
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

    /// True when batches were stored since the last pass (or there was none).
    fn stale(&self) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.arrivals != Some(self.arrivals.count())
    }

    /// Runs a pass as of `now` unless no batch was stored since the last one. Returns whether
    /// it ran.
    pub fn refresh(&self, now: i64) -> Result<bool, DetectionError> {
        let _one = self.passing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.stale() {
            return Ok(false);
        }
        let arrivals = self.arrivals.count();
        let reports = self.pass(now)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = Cache {
            arrivals: Some(arrivals),
            now,
            reports,
        };
        Ok(true)
    }

    /// Detection over every service as of `now`: records the deploys of builds first seen
    /// in the history, then one report per service.
    fn pass(&self, now: i64) -> Result<BTreeMap<String, Report>, DetectionError> {
        let started = Instant::now();
        let history = Window {
            from: now - self.cfg.history,
            to: now + 60,
        };
        let deploys = self.changes.note_deploys(history)?;
        let services = self.store.known_services()?;
        let reports = self.reports(&services, now)?;
        let open: usize = (reports.values())
            .map(|r| r.regressions.iter().filter(|g| g.status == "open").count())
            .sum();
        let series: u64 = reports.values().map(|r| r.series).sum();
        tracing::info!(
            services = services.len(),
            series,
            open,
            deploys,
            ms = started.elapsed().as_millis() as u64,
            "detection pass"
        );
        Ok(reports)
    }

    /// One report per service in `services`, as of `now`.
    fn reports(
        &self,
        services: &[String],
        now: i64,
    ) -> Result<BTreeMap<String, Report>, DetectionError> {
        let scales = series::fleet_scales(&*self.store, &self.fleet, now)?;
        let stacks = series::StoreStacks(&*self.store);
        let mut out = BTreeMap::new();
        for service in services {
            let cfg = self.cfg.for_service(service);
            let scale = scales.get(service).copied().unwrap_or(1.0);
            let s = series::read(&*self.store, service, &cfg, scale, now)?;
            let changes = self.changes.list(&ListChangesRequest {
                window: None,
                service: service.clone(),
            })?;
            let report = crate::detect::detect(&s, &stacks, &changes.changes, &self.cfg, now)?;
            out.insert(service.clone(), report);
        }
        Ok(out)
    }

    /// Regressions whose change point is in the request's window (the analysis window up to
    /// now without one); a pass runs first when data arrived since the last one. A window
    /// ending before the cached pass's analysis window is detected as of its end, uncached.
    pub fn regressions(
        &self,
        r: &ListRegressionsRequest,
        now: i64,
    ) -> Result<ListRegressionsResponse, DetectionError> {
        let window = match &r.window {
            None => Window {
                from: now - self.cfg.analysis_window,
                to: now + 1,
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
        self.refresh(now)?;
        let only = |s: &String| r.service.is_empty() || *s == r.service;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !r.service.is_empty() && !cache.reports.contains_key(&r.service) {
            return Err(DetectionError::Bad(format!(
                "service: unknown service {:?} (no profile of it was ever stored)",
                r.service
            )));
        }
        let past = window.to < cache.now - self.cfg.analysis_window;
        let reports = if past {
            let services: Vec<String> = cache.reports.keys().filter(|s| only(s)).cloned().collect();
            drop(cache);
            self.reports(&services, window.to.min(now))?
        } else {
            let picked = cache.reports.iter().filter(|(s, _)| only(s));
            picked.map(|(s, r)| (s.clone(), r.clone())).collect()
        };
        Ok(answer(&reports, window, r.all))
    }

    /// Changes in the request's window.
    pub fn changes(&self, r: &ListChangesRequest) -> Result<ListChangesResponse, DetectionError> {
        Ok(self.changes.list(r)?)
    }

    /// Open regressions per service in the last pass (every service it covered, 0 included).
    pub fn open_by_service(&self) -> Vec<(String, u64)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        (cache.reports.iter())
            .map(|(s, r)| {
                let open = r.regressions.iter().filter(|g| g.status == "open").count();
                (s.clone(), open as u64)
            })
            .collect()
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
        (reports.iter())
            .filter(|(_, r)| !r.note.is_empty())
            .map(|(s, r)| format!("{s}: {}", r.note))
            .collect::<Vec<_>>()
            .join("; ")
    };
    ListRegressionsResponse {
        regressions,
        funnel: stages,
        series,
        note,
    }
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
            Ok(Err(e)) => tracing::warn!(error = %e, "detection pass failed; retrying next tick"),
            Err(e) => tracing::warn!(error = %e, "detection pass task failed"),
        }
    }
}
