//! Change events, the candidates for a regression's root cause: validation of what
//! `RecordChange` is given (each refusal names the field), ids drawn when none is given,
//! deploys recorded by the collector itself when a build id first appears for a service
//! (`automatic`, id `deploy-<service>-<build id prefix>`), and merging: a recorded change that
//! names the build id of an automatic deploy is that deploy (its id and title win; it is
//! listed once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wattson_proto::v1::{
    Change, ListChangesRequest, ListChangesResponse, RecordChangeResponse, TimeWindow,
};

use crate::store::{Store, StoreError, Window};

/// Kinds a change may have.
pub const KINDS: [&str; 4] = ["deploy", "config", "experiment", "commit"];
/// How far in the future a change may be dated (clocks of recorders and collector disagree).
pub const CLOCK_SKEW_SECONDS: i64 = 300;
/// Longest id, service, build id or author, bytes.
const MAX_NAME: usize = 256;
/// Longest title, bytes.
const MAX_TITLE: usize = 1024;
/// Longest URL, bytes.
const MAX_URL: usize = 2048;
/// Most touched functions one change may name, and the longest name.
const MAX_TOUCHED: usize = 256;
const MAX_FUNCTION: usize = 1024;
/// Build id characters an automatic deploy's id keeps.
const DEPLOY_ID_PREFIX: usize = 12;

/// Why a change was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A field of the change or request is invalid (maps to INVALID_ARGUMENT).
    #[error("{field}: {why}")]
    Invalid {
        /// The field at fault, as the proto names it (`change.title`).
        field: &'static str,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// The store failed (maps to UNAVAILABLE).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

fn invalid(field: &'static str, why: impl Into<String>) -> ChangeError {
    ChangeError::Invalid {
        field,
        why: why.into(),
    }
}

/// Records and lists changes over a store; one per collector.
pub struct Changes {
    store: Arc<dyn Store>,
    /// Serializes "look for a deploy of this build, then write" between recording and the
    /// automatic deploys, so neither writes a second change for one build.
    writing: Mutex<()>,
    drawn: AtomicU64,
}

/// Every time a change can have.
const ALL_TIME: Window = Window {
    from: i64::MIN,
    to: i64::MAX,
};

impl Changes {
    /// Changes kept in `store`.
    pub fn new(store: Arc<dyn Store>) -> Changes {
        Changes {
            store,
            writing: Mutex::new(()),
            drawn: AtomicU64::new(0),
        }
    }

    /// Validates and stores `change` as of `now` (Unix seconds). Returns its id, and whether it
    /// merged with the automatic deploy of the build it names.
    pub fn record(
        &self,
        change: Option<Change>,
        now: i64,
    ) -> Result<RecordChangeResponse, ChangeError> {
        let mut c =
            change.ok_or_else(|| invalid("change", "missing: the request holds no change"))?;
        self.check(&mut c, now)?;
        if c.id.is_empty() {
            c.id = self.draw_id(now);
        }
        let _w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let deploy = match c.build_id.is_empty() {
            true => None,
            false => self
                .store
                .changes(ALL_TIME, Some(&c.service))?
                .into_iter()
                .find(|d| d.automatic && d.build_id == c.build_id),
        };
        let replaces = deploy.as_ref().map(|d| d.id.as_str());
        self.store.put_change(&c, replaces)?;
        tracing::info!(id = %c.id, service = %c.service, kind = %c.kind, merged = ?replaces,
            "change recorded");
        Ok(RecordChangeResponse {
            id: c.id,
            merged: deploy.is_some(),
        })
    }

    /// Refuses what cannot be stored, naming the field; fills the default kind.
    fn check(&self, c: &mut Change, now: i64) -> Result<(), ChangeError> {
        let line = |field: &'static str, v: &str, max: usize| -> Result<(), ChangeError> {
            if v.len() > max {
                return Err(invalid(
                    field,
                    format!("{} bytes, at most {max} allowed", v.len()),
                ));
            }
            if v.chars().any(char::is_control) {
                return Err(invalid(
                    field,
                    "holds a control character (line break, tab...)",
                ));
            }
            Ok(())
        };
        if c.automatic {
            return Err(invalid(
                "change.automatic",
                "only the collector records automatic deploys; leave it false",
            ));
        }
        line("change.id", &c.id, MAX_NAME)?;
        if c.id.starts_with("deploy-") {
            return Err(invalid(
                "change.id",
                "ids starting with \"deploy-\" are the collector's automatic deploys; pick another",
            ));
        }
        if c.service.is_empty() {
            return Err(invalid(
                "change.service",
                "missing: name the service that changed",
            ));
        }
        line("change.service", &c.service, MAX_NAME)?;
        if c.title.trim().is_empty() {
            return Err(invalid(
                "change.title",
                "missing: say what changed in a few words",
            ));
        }
        line("change.title", &c.title, MAX_TITLE)?;
        if c.kind.is_empty() {
            c.kind = "deploy".into();
        }
        if !KINDS.contains(&c.kind.as_str()) {
            return Err(invalid(
                "change.kind",
                format!("{:?} is not one of {}", c.kind, KINDS.join(", ")),
            ));
        }
        line("change.build_id", &c.build_id, MAX_NAME)?;
        line("change.author", &c.author, MAX_NAME)?;
        line("change.url", &c.url, MAX_URL)?;
        if c.at_unix_seconds <= 0 {
            return Err(invalid(
                "change.at_unix_seconds",
                "missing: when did the change take effect?",
            ));
        }
        if c.at_unix_seconds > now + CLOCK_SKEW_SECONDS {
            return Err(invalid(
                "change.at_unix_seconds",
                format!(
                    "{} is {} s in the future (at most {CLOCK_SKEW_SECONDS} s of clock skew allowed)",
                    c.at_unix_seconds,
                    c.at_unix_seconds - now
                ),
            ));
        }
        if c.touched.len() > MAX_TOUCHED {
            return Err(invalid(
                "change.touched",
                format!(
                    "{} functions, at most {MAX_TOUCHED} allowed",
                    c.touched.len()
                ),
            ));
        }
        for f in &c.touched {
            if f.is_empty() {
                return Err(invalid("change.touched", "an empty function name"));
            }
            line("change.touched", f, MAX_FUNCTION)?;
        }
        if !self.store.known_services()?.contains(&c.service) {
            return Err(invalid(
                "change.service",
                format!(
                    "unknown service {:?}: no profile of it was ever stored (see `wattson power`)",
                    c.service
                ),
            ));
        }
        Ok(())
    }

    /// A fresh id: `chg-` and 16 hex digits from the clock, this process and a counter.
    fn draw_id(&self, now: i64) -> String {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = foldhash::fast::RandomState::default().build_hasher();
        h.write_i64(now);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.write_u64(self.drawn.fetch_add(1, Ordering::Relaxed));
        format!("chg-{:016x}", h.finish())
    }

    /// Changes in the request's window (all time without one), oldest first. An automatic
    /// deploy whose build a recorded change names is left out: they are one change.
    pub fn list(&self, r: &ListChangesRequest) -> Result<ListChangesResponse, ChangeError> {
        let window = request_window(r.window.as_ref())?;
        let service = (!r.service.is_empty()).then_some(r.service.as_str());
        let changes = self.store.changes(window, service)?;
        Ok(ListChangesResponse {
            changes: merged(changes),
        })
    }

    /// Records an automatic deploy for every (service, build id) with samples in `window` that
    /// no change names yet; moves an automatic deploy earlier when backfilled data shows its
    /// build sooner. Returns how many it wrote.
    pub fn note_deploys(&self, window: Window) -> Result<usize, ChangeError> {
        let seen = self.store.first_builds(window)?;
        if seen.is_empty() {
            return Ok(0);
        }
        let _w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let all = self.store.changes(ALL_TIME, None)?;
        let mut by_build: HashMap<(&str, &str), &Change> = HashMap::new();
        for c in all.iter().filter(|c| !c.build_id.is_empty()) {
            // A recorded change wins over an automatic one of the same build.
            let e = by_build
                .entry((c.service.as_str(), c.build_id.as_str()))
                .or_insert(c);
            if e.automatic && !c.automatic {
                *e = c;
            }
        }
        let taken: std::collections::HashSet<&str> = all.iter().map(|c| c.id.as_str()).collect();
        let mut wrote = 0;
        for f in &seen {
            let change = match by_build.get(&(f.service.as_str(), f.build_id.as_str())) {
                Some(c) if c.automatic && f.at < c.at_unix_seconds => Change {
                    at_unix_seconds: f.at,
                    ..(*c).clone()
                },
                Some(_) => continue,
                None => {
                    let short: String = f.build_id.chars().take(DEPLOY_ID_PREFIX).collect();
                    let mut id = format!("deploy-{}-{short}", f.service);
                    if taken.contains(id.as_str()) {
                        id = format!("deploy-{}-{}", f.service, f.build_id);
                    }
                    Change {
                        id,
                        service: f.service.clone(),
                        at_unix_seconds: f.at,
                        title: format!("build {short} first seen"),
                        kind: "deploy".into(),
                        build_id: f.build_id.clone(),
                        automatic: true,
                        ..Change::default()
                    }
                }
            };
            tracing::info!(id = %change.id, service = %change.service, at = change.at_unix_seconds,
                "automatic deploy: build first seen");
            self.store.put_change(&change, None)?;
            wrote += 1;
        }
        Ok(wrote)
    }
}

/// The window of a request: all time when none is given; reversed is refused.
pub fn request_window(w: Option<&TimeWindow>) -> Result<Window, ChangeError> {
    let Some(w) = w else { return Ok(ALL_TIME) };
    if w.to_unix_seconds < w.from_unix_seconds {
        return Err(invalid(
            "window",
            format!(
                "reversed: from {} is after to {}",
                w.from_unix_seconds, w.to_unix_seconds
            ),
        ));
    }
    Ok(Window {
        from: w.from_unix_seconds,
        to: w.to_unix_seconds,
    })
}

/// `changes` without the automatic deploys a recorded change of the same build stands for.
fn merged(changes: Vec<Change>) -> Vec<Change> {
    let recorded: std::collections::HashSet<(String, String)> = changes
        .iter()
        .filter(|c| !c.automatic && !c.build_id.is_empty())
        .map(|c| (c.service.clone(), c.build_id.clone()))
        .collect();
    changes
        .into_iter()
        .filter(|c| !(c.automatic && recorded.contains(&(c.service.clone(), c.build_id.clone()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::synthetic::BatchBuilder;

    const T0: i64 = 1_793_577_600;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let s: Arc<dyn Store> = Arc::from(crate::store::open(&url).unwrap());
        for (seq, at, build) in [(1, T0, "b1"), (2, T0 + 3600, "b2aaaaaaaaaaaaaaaa")] {
            let b = BatchBuilder::new("h1", seq)
                .interval(at, 10, false, 0.0, &[("api", build, "main;work", 3, 30.0)])
                .build();
            s.ingest(&b).unwrap();
        }
        (dir, s)
    }

    fn change() -> Change {
        Change {
            service: "api".into(),
            at_unix_seconds: T0 + 60,
            title: "raise the cache size".into(),
            kind: "config".into(),
            ..Change::default()
        }
    }

    fn refused(c: &Changes, ch: Change) -> (&'static str, String) {
        match c.record(Some(ch), T0 + 7200) {
            Err(ChangeError::Invalid { field, why }) => (field, why),
            other => panic!("accepted or failed otherwise: {other:?}"),
        }
    }

    #[test]
    fn each_bad_field_is_refused_by_name() {
        let (_d, s) = store();
        let c = Changes::new(s);
        let cases: Vec<(&str, Change)> = vec![
            (
                "change.service",
                Change {
                    service: "nope".into(),
                    ..change()
                },
            ),
            (
                "change.service",
                Change {
                    service: String::new(),
                    ..change()
                },
            ),
            (
                "change.title",
                Change {
                    title: "  ".into(),
                    ..change()
                },
            ),
            (
                "change.title",
                Change {
                    title: "x".repeat(MAX_TITLE + 1),
                    ..change()
                },
            ),
            (
                "change.kind",
                Change {
                    kind: "rollback".into(),
                    ..change()
                },
            ),
            (
                "change.at_unix_seconds",
                Change {
                    at_unix_seconds: T0 + 7200 + 301,
                    ..change()
                },
            ),
            (
                "change.at_unix_seconds",
                Change {
                    at_unix_seconds: 0,
                    ..change()
                },
            ),
            (
                "change.touched",
                Change {
                    touched: vec!["f".into(); MAX_TOUCHED + 1],
                    ..change()
                },
            ),
            (
                "change.touched",
                Change {
                    touched: vec!["a\nb".into()],
                    ..change()
                },
            ),
            (
                "change.url",
                Change {
                    url: "u".repeat(MAX_URL + 1),
                    ..change()
                },
            ),
            (
                "change.id",
                Change {
                    id: "deploy-api-x".into(),
                    ..change()
                },
            ),
            (
                "change.automatic",
                Change {
                    automatic: true,
                    ..change()
                },
            ),
        ];
        for (field, ch) in cases {
            let (got, why) = refused(&c, ch);
            assert_eq!(got, field, "{why}");
        }
        assert!(
            c.list(&ListChangesRequest::default())
                .unwrap()
                .changes
                .is_empty()
        );
        // Within the clock skew is fine; the kind defaults to deploy; the id is drawn.
        let ok = c
            .record(
                Some(Change {
                    at_unix_seconds: T0 + 7200 + 299,
                    kind: String::new(),
                    ..change()
                }),
                T0 + 7200,
            )
            .unwrap();
        assert!(ok.id.starts_with("chg-") && !ok.merged, "{ok:?}");
        let listed = c.list(&ListChangesRequest::default()).unwrap().changes;
        assert_eq!(
            (listed[0].id.as_str(), listed[0].kind.as_str()),
            (ok.id.as_str(), "deploy")
        );
    }

    #[test]
    fn deploys_are_recorded_once_and_merge_with_a_recorded_change() {
        let (_d, s) = store();
        let c = Changes::new(s.clone());
        let day = Window {
            from: T0,
            to: T0 + 86_400,
        };
        assert_eq!(c.note_deploys(day).unwrap(), 2);
        assert_eq!(c.note_deploys(day).unwrap(), 0, "a build is deployed once");
        let ids: Vec<String> = c
            .list(&ListChangesRequest::default())
            .unwrap()
            .changes
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ids, ["deploy-api-b1", "deploy-api-b2aaaaaaaaaa"]);
        // Recording the build's change merges: its id and title win, listed once.
        let r = c
            .record(
                Some(Change {
                    id: "PR-42".into(),
                    build_id: "b2aaaaaaaaaaaaaaaa".into(),
                    ..change()
                }),
                T0 + 7200,
            )
            .unwrap();
        assert_eq!((r.id.as_str(), r.merged), ("PR-42", true));
        let listed = c.list(&ListChangesRequest::default()).unwrap().changes;
        let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["deploy-api-b1", "PR-42"]);
        assert_eq!(listed[1].title, "raise the cache size");
        assert_eq!(
            c.note_deploys(day).unwrap(),
            0,
            "the recorded change stands for the deploy"
        );
        // Recorded first, seen later: no automatic deploy either.
        c.record(
            Some(Change {
                id: "PR-43".into(),
                build_id: "b3".into(),
                ..change()
            }),
            T0 + 7200,
        )
        .unwrap();
        let b = BatchBuilder::new("h1", 9)
            .interval(
                T0 + 5000,
                10,
                false,
                0.0,
                &[("api", "b3", "main;work", 3, 30.0)],
            )
            .build();
        s.ingest(&b).unwrap();
        assert_eq!(c.note_deploys(day).unwrap(), 0);
        assert_eq!(
            c.list(&ListChangesRequest::default())
                .unwrap()
                .changes
                .len(),
            3
        );
    }
}
