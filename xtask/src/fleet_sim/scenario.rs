//! What happens to the simulated fleet over time, and the ground truth written for it: step
//! regressions of many sizes, slow creeps, transient spikes, cost shifts between sibling
//! functions, improvements, deploys (new build ids) that do and do not cause a regression, and
//! change events recorded with the functions they touched, or not recorded at all.
//!
//! Every effect is an amount of the service's base samples added to (or taken from) a set of
//! stacks, shaped in time (a step, a ramp, a window), so the ground truth's `delta_share` is
//! exactly what was added, as a fraction of the service.

use serde::Serialize;

use super::model::Service;
use super::rng::Rng;

/// Step regression sizes, fractions of a service: 0.005% to 1%, cycled over the fleet so each
/// size appears about as often.
pub const SIZES: &[f64] = &[0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01];

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Lasting step up: a regression.
    Step,
    /// Slow lasting increase: a regression.
    Creep,
    /// Increase that ends: must not be reported.
    Spike,
    /// Work moved between sibling functions, total unchanged: must not be reported.
    Shift,
    /// Lasting step down: tracked, not a regression.
    Improvement,
}

/// What a fleet's services go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scenario {
    /// Every kind of event per service (steps of every size, creeps, spikes, shifts,
    /// improvements, deploys without effect): what the detect bench scores.
    #[default]
    Mixed,
    /// One 1% step per service, caused by a recorded deploy (and its decoy experiment): the
    /// smallest fleet whose regression must reach the solver with its change.
    OneStep,
}

impl Scenario {
    /// The events of one service, in order of priority (a short history holds fewer).
    fn kinds(self) -> &'static [Kind] {
        match self {
            Scenario::Mixed => PLAN,
            Scenario::OneStep => &[Kind::Step],
        }
    }
}

/// Where a change point's change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A deploy recorded through `RecordChange` (build id and touched functions).
    RecordedDeploy,
    /// A new build id only agents report; the collector records the deploy by itself.
    AutomaticDeploy,
    /// A config change recorded with the functions it touched, no new build.
    Config,
    /// Nothing recorded: no culprit should be named.
    None,
}

/// One ground-truth event.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Event {
    pub id: String,
    pub service: String,
    pub kind: Kind,
    /// The function that changed (for a shift, the one that gained).
    pub function: String,
    /// A shift's function that lost the work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_function: Option<String>,
    /// True when the added cost spreads over the function's whole subtree (the callees' shares
    /// grow too), false when it is the function's own time.
    pub subtree: bool,
    /// Start, Unix seconds.
    pub at: i64,
    /// End of a spike, or of a creep's ramp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Added fraction of the service's samples at full effect (negative for improvements).
    pub delta_share: f64,
    pub cause: Cause,
    /// The change that caused it, when one exists (recorded or automatic). An automatic
    /// deploy's id here is `deploy-SERVICE-BUILD`; the collector may name it by a prefix of the
    /// build, so match those by the change's `build_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<String>,
    /// Whether a detector should report it as an open regression.
    pub regression: bool,
    #[serde(skip)]
    pub effect: Vec<(usize, f64)>,
}

impl Event {
    /// How much of the effect is present at `t` (0 to 1).
    pub fn factor(&self, t: i64) -> f64 {
        if t < self.at {
            return 0.0;
        }
        match (self.kind, self.until) {
            (Kind::Spike, Some(end)) => f64::from(u8::from(t < end)),
            (Kind::Creep, Some(end)) => ((t - self.at) as f64 / (end - self.at) as f64).min(1.0),
            _ => 1.0,
        }
    }
}

/// A change event: recorded through `RecordChange`, or a deploy only agents show.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Change {
    pub id: String,
    pub service: String,
    pub at: i64,
    /// deploy, config, experiment, commit.
    pub kind: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build_id: String,
    pub touched: Vec<String>,
    /// False for deploys only agents report (the collector records those by itself).
    pub recorded: bool,
}

/// One service's scenario: its events, changes and build timeline.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub events: Vec<Event>,
    pub changes: Vec<Change>,
    /// (from, build id), oldest first; the first starts the history.
    pub builds: Vec<(i64, String)>,
}

impl Timeline {
    /// The build running at `t`.
    pub fn build_at(&self, t: i64) -> &str {
        self.builds
            .iter()
            .rev()
            .find(|(from, _)| *from <= t)
            .or(self.builds.first())
            .map_or("", |(_, b)| b.as_str())
    }

    /// Weight of every stack of `svc` at `t`: seasonal base plus every event's effect.
    pub fn weights(&self, svc: &Service, t: i64, out: &mut Vec<f64>) {
        out.clear();
        out.extend((0..svc.stacks.len()).map(|k| svc.seasonal_weight(k, t)));
        for e in &self.events {
            let f = e.factor(t);
            if f > 0.0 {
                for &(k, amount) in &e.effect {
                    out[k] = (out[k] + f * amount).max(0.0);
                }
            }
        }
    }
}

/// The plan of one service: which events, in order of priority (a short history holds fewer).
const PLAN: &[Kind] = &[
    Kind::Step,
    Kind::Step,
    Kind::Spike,
    Kind::Creep,
    Kind::Shift,
    Kind::Improvement,
    Kind::Step,
    Kind::Spike,
];

/// Counters shared across services so sizes and causes are spread over the whole fleet.
#[derive(Debug, Default)]
pub struct Cycle {
    size: usize,
    cause: usize,
    scenario: Scenario,
}

impl Cycle {
    /// The counters' start for `scenario`: one-step fleets inject only the largest size, each
    /// by a recorded deploy.
    pub fn new(scenario: Scenario) -> Cycle {
        Cycle {
            size: if scenario == Scenario::OneStep {
                SIZES.len() - 1
            } else {
                0
            },
            cause: 0,
            scenario,
        }
    }

    fn next_size(&mut self) -> f64 {
        let d = SIZES[self.size % SIZES.len()];
        if self.scenario == Scenario::Mixed {
            self.size += 1;
        }
        d
    }

    fn next_cause(&mut self) -> Cause {
        let c = [
            Cause::RecordedDeploy,
            Cause::AutomaticDeploy,
            Cause::Config,
            Cause::None,
        ][self.cause % 4];
        if self.scenario == Scenario::Mixed {
            self.cause += 1;
        }
        c
    }
}

/// Builds the timeline of `svc` over `[start, end)` at `step`. Events start after 2.5 days of
/// history (a detector needs a baseline) and leave 12 h after the last one, at least 12 h apart.
pub fn plan(
    rng: &mut Rng,
    svc: &Service,
    seed: u64,
    start: i64,
    end: i64,
    step: i64,
    cycle: &mut Cycle,
) -> Timeline {
    let mut tl = Timeline::default();
    tl.builds.push((start, build_id(rng)));
    let first = start + 60 * 3600;
    let last = end - 12 * 3600;
    let slots = ((last - first) / (12 * 3600)).max(0) as usize;
    let mut free: Vec<usize> = (0..slots).collect();
    let mut used: Vec<usize> = Vec::new();
    let mut changes = 0usize;
    let mut next_change_id = || {
        changes += 1;
        format!("sim{seed}-{}-c{changes}", svc.name)
    };
    // Slot times, jittered within the slot and aligned to the step.
    let slot_time = |rng: &mut Rng, free: &mut Vec<usize>| -> Option<i64> {
        if free.is_empty() {
            return None;
        }
        let slot = free.swap_remove(rng.below(free.len()));
        let t = first + slot as i64 * 12 * 3600 + rng.range(0.0, 6.0 * 3600.0) as i64;
        Some(t - (t - start).rem_euclid(step))
    };
    for (n, &kind) in cycle.scenario.kinds().iter().enumerate() {
        let Some(at) = slot_time(rng, &mut free) else {
            break;
        };
        let id = format!("sim{seed}-{}-e{n}", svc.name);
        let Some(mut event) = shape_event(rng, svc, kind, id, at, step, &used, cycle) else {
            continue;
        };
        used.push(svc_index(svc, &event.function));
        if let Some(from) = &event.from_function {
            used.push(svc_index(svc, from));
        }
        let f = svc_index(svc, &event.function);
        match kind {
            Kind::Step => event.cause = cycle.next_cause(),
            Kind::Shift | Kind::Improvement => event.cause = Cause::Config,
            Kind::Spike | Kind::Creep => event.cause = Cause::None,
        }
        let touched = match kind {
            Kind::Shift => vec![
                event.from_function.clone().unwrap_or_default(),
                event.function.clone(),
            ],
            _ => vec![event.function.clone()],
        };
        match event.cause {
            Cause::RecordedDeploy | Cause::AutomaticDeploy => {
                let build = build_id(rng);
                tl.builds.push((at, build.clone()));
                let recorded = event.cause == Cause::RecordedDeploy;
                let cid = if recorded {
                    next_change_id()
                } else {
                    format!("deploy-{}-{build}", svc.name)
                };
                tl.changes.push(Change {
                    id: cid.clone(),
                    service: svc.name.clone(),
                    at,
                    kind: "deploy".into(),
                    title: format!("deploy {} {}", svc.name, &build[..12]),
                    build_id: build,
                    touched: if recorded { touched } else { Vec::new() },
                    recorded,
                });
                event.change_id = Some(cid);
            }
            Cause::Config => {
                let cid = next_change_id();
                tl.changes.push(Change {
                    id: cid.clone(),
                    service: svc.name.clone(),
                    at,
                    kind: if kind == Kind::Shift {
                        "commit"
                    } else {
                        "config"
                    }
                    .into(),
                    title: format!("{} touching {}", kind_word(kind), event.function),
                    build_id: String::new(),
                    touched,
                    recorded: true,
                });
                event.change_id = Some(cid);
            }
            Cause::None => {}
        }
        // A decoy before each regression that has a change: an experiment on unrelated code.
        if event.regression && event.change_id.is_some() {
            let others: Vec<usize> = (1..svc.functions.len())
                .filter(|&g| !svc.related(g, f))
                .collect();
            if !others.is_empty() {
                let g = others[rng.below(others.len())];
                let back = step * (1 + rng.below((4 * 3600 / step).max(1) as usize) as i64);
                tl.changes.push(Change {
                    id: next_change_id(),
                    service: svc.name.clone(),
                    at: at - back,
                    kind: "experiment".into(),
                    title: format!("experiment on {}", svc.functions[g].name),
                    build_id: String::new(),
                    touched: vec![svc.functions[g].name.clone()],
                    recorded: true,
                });
            }
        }
        tl.events.push(event);
    }
    // A deploy that changes nothing, recorded one seed-half of the time.
    if let Some(at) = slot_time(rng, &mut free).filter(|_| cycle.scenario == Scenario::Mixed) {
        let build = build_id(rng);
        tl.builds.push((at, build.clone()));
        let recorded = rng.unit() < 0.5;
        tl.changes.push(Change {
            id: if recorded {
                next_change_id()
            } else {
                format!("deploy-{}-{build}", svc.name)
            },
            service: svc.name.clone(),
            at,
            kind: "deploy".into(),
            title: format!("deploy {} {} (no effect)", svc.name, &build[..12]),
            build_id: build,
            touched: Vec::new(),
            recorded,
        });
    }
    tl.builds.sort_by_key(|(t, _)| *t);
    tl.changes.sort_by_key(|c| c.at);
    tl
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Step => "change",
        Kind::Creep => "creep",
        Kind::Spike => "spike",
        Kind::Shift => "refactor",
        Kind::Improvement => "optimization",
    }
}

/// The deepest function at or below `f` through which at least `dedup_flow` of `effect` flows
/// (the collector's own default, so the truth and dedup share one definition of "the function
/// that changed"): the function a detector should name (with one heavy callee, that callee is
/// where it changed).
fn deepest(svc: &Service, mut f: usize, effect: &[(usize, f64)]) -> usize {
    let flow = wattson_collector::detect::DetectConfig::default().dedup_flow;
    let total: f64 = effect.iter().map(|(_, a)| a).sum();
    let through = |g: usize| -> f64 {
        effect
            .iter()
            .filter(|(k, _)| svc.stacks[*k].path.contains(&g))
            .map(|(_, a)| a)
            .sum()
    };
    while let Some(&c) = svc.functions[f]
        .children
        .iter()
        .find(|&&c| through(c) >= flow * total)
    {
        f = c;
    }
    f
}

fn svc_index(svc: &Service, name: &str) -> usize {
    svc.functions
        .iter()
        .position(|f| f.name == name)
        .expect("event names a function of its service")
}

fn build_id(rng: &mut Rng) -> String {
    format!(
        "{:016x}{:016x}{:08x}",
        rng.next(),
        rng.next(),
        rng.next() as u32
    )
}

/// Picks the function(s) and the stacks an event of `kind` acts on; `None` when the service has
/// no function that fits.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn shape_event(
    rng: &mut Rng,
    svc: &Service,
    kind: Kind,
    id: String,
    at: i64,
    step: i64,
    used: &[usize],
    cycle: &mut Cycle,
) -> Option<Event> {
    let seasonal = |f: usize| svc.seasonal.iter().any(|(g, _)| svc.related(*g, f));
    let free = |f: usize| !used.iter().any(|&u| svc.related(u, f)) && !seasonal(f);
    let n = svc.functions.len();
    let pick = |rng: &mut Rng, ok: &dyn Fn(usize) -> bool| -> Option<usize> {
        let c: Vec<usize> = (1..n).filter(|&f| free(f) && ok(f)).collect();
        (!c.is_empty()).then(|| c[rng.below(c.len())])
    };
    let own = |f: usize| vec![(f, 1.0)];
    let spread = |f: usize, amount: f64| -> Vec<(usize, f64)> {
        let w = svc.share(f);
        svc.through(f)
            .map(|k| (k, amount * svc.stacks[k].weight / w))
            .collect()
    };
    let mut event = Event {
        id,
        service: svc.name.clone(),
        kind,
        function: String::new(),
        from_function: None,
        subtree: false,
        at,
        until: None,
        delta_share: 0.0,
        cause: Cause::None,
        change_id: None,
        regression: matches!(kind, Kind::Step | Kind::Creep),
        effect: Vec::new(),
    };
    match kind {
        Kind::Step | Kind::Creep => {
            let d = if kind == Kind::Step {
                cycle.next_size()
            } else {
                SIZES[4 + rng.below(SIZES.len() - 4)]
            };
            // Half the time the whole subtree grows (callees too), when a function exists
            // that such a delta makes grow by 2% to 100%; otherwise the function's own time.
            let sub = rng.unit() < 0.5;
            let f = if sub {
                pick(rng, &|f| {
                    !svc.functions[f].children.is_empty()
                        && (d / 1.0..=d / 0.02).contains(&svc.share(f))
                })
            } else {
                None
            };
            let (f, effect) = match f {
                Some(f) => {
                    let effect = spread(f, d);
                    (deepest(svc, f, &effect), effect)
                }
                None => {
                    let f =
                        pick(rng, &|f| svc.share(f) >= d / 2.0).or_else(|| pick(rng, &|_| true))?;
                    (f, own(f).into_iter().map(|(k, _)| (k, d)).collect())
                }
            };
            event.subtree = f != 0 && effect.len() > 1;
            event.function = svc.functions[f].name.clone();
            event.delta_share = d;
            event.effect = effect;
            if kind == Kind::Creep {
                let ramp = step * (rng.range(24.0, 48.0) * 3600.0 / step as f64) as i64;
                event.until = Some(at + ramp);
            }
        }
        Kind::Spike => {
            let d = rng.range(0.002, 0.02);
            let f = pick(rng, &|_| true)?;
            let hold = step * ((rng.range(0.5, 2.0) * 3600.0 / step as f64) as i64).max(1);
            event.function = svc.functions[f].name.clone();
            event.delta_share = d;
            event.effect = own(f).into_iter().map(|(k, _)| (k, d)).collect();
            event.until = Some(at + hold);
        }
        Kind::Shift => {
            // Two siblings; move 20-80% of the first's work to the second.
            let parents: Vec<usize> = (0..n)
                .filter(|&p| {
                    let c = &svc.functions[p].children;
                    c.len() >= 2 && c.iter().filter(|&&f| free(f)).count() >= 2
                })
                .collect();
            if parents.is_empty() {
                return None;
            }
            let p = parents[rng.below(parents.len())];
            let kids: Vec<usize> = svc.functions[p]
                .children
                .iter()
                .copied()
                .filter(|&f| free(f))
                .collect();
            let a = kids[rng.below(kids.len())];
            let b = *kids.iter().find(|&&f| f != a)?;
            let m = svc.share(a) * rng.range(0.2, 0.8);
            let mut effect = spread(a, -m);
            effect.extend(spread(b, m));
            event.function = svc.functions[b].name.clone();
            event.from_function = Some(svc.functions[a].name.clone());
            event.subtree = true;
            event.delta_share = m;
            event.effect = effect;
        }
        Kind::Improvement => {
            let d = SIZES[3 + rng.below(4)];
            let f = pick(rng, &|f| svc.share(f) >= 2.0 * d)?;
            event.function = svc.functions[f].name.clone();
            event.subtree = !svc.functions[f].children.is_empty();
            event.delta_share = -d;
            event.effect = spread(f, -d);
        }
    }
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_leaves_the_total_unchanged_and_a_step_adds_its_delta() {
        let mut rng = Rng::new(11);
        let mut svc = Service::generate(&mut rng, 0, 80, 1000);
        let tl = plan(
            &mut rng,
            &svc,
            11,
            0,
            14 * 86_400,
            300,
            &mut Cycle::default(),
        );
        // Compared across one step: without the daily cycles, only the events move weights.
        svc.seasonal.clear();
        let mut w = Vec::new();
        for e in &tl.events {
            tl.weights(&svc, e.at - 300, &mut w);
            let before: f64 = w.iter().sum();
            tl.weights(&svc, e.at, &mut w);
            let after: f64 = w.iter().sum();
            let added = after - before;
            match e.kind {
                Kind::Shift => assert!(added.abs() < 1e-9, "{e:?}: shift changed the total"),
                Kind::Step | Kind::Spike | Kind::Improvement => assert!(
                    (added - e.delta_share).abs() < 1e-9 + 1e-3 * e.delta_share.abs(),
                    "{e:?}: added {added}"
                ),
                Kind::Creep => assert!(added < e.delta_share),
            }
        }
        assert!(tl.events.iter().any(|e| e.kind == Kind::Step));
    }
}
