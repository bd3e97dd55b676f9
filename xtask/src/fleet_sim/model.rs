//! The simulated fleet's shape: services, each a call tree of named functions with one stack per
//! function (its self time, root first), base weights (fractions of the service's samples),
//! energy per sample, a daily load curve and the functions whose share follows the time of day.
//! What changes over time (regressions, spikes, shifts, deploys) is in `scenario`.

use super::rng::Rng;

/// Samples a host delivers per busy CPU per second (the daemon's default frequency).
pub const FREQUENCY_HZ: u32 = 19;
/// Nominal CPUs of one simulated host (the virtual host reports hosts x this).
pub const CPUS_PER_HOST: u32 = 8;
/// Idle watts of one simulated host (reported as idle, never charged to functions).
pub const IDLE_WATTS_PER_HOST: f64 = 60.0;

const MODULES: &[&str] = &[
    "rpc", "db", "cache", "auth", "json", "proto", "log", "http", "sched", "compress", "crypto",
    "index", "render", "queue", "metrics",
];
const VERBS: &[&str] = &[
    "handle",
    "encode",
    "decode",
    "lookup",
    "insert",
    "hash",
    "parse",
    "serialize",
    "flush",
    "validate",
    "merge",
    "scan",
    "render",
    "compress",
    "sign",
    "route",
    "fetch",
    "update",
];

/// One function of a service's call tree.
#[derive(Debug, Clone)]
pub struct Func {
    pub name: String,
    pub file: String,
    /// Index of the caller; `None` for the root.
    pub parent: Option<usize>,
    pub children: Vec<usize>,
}

/// One stack: the path from the root to a function (root first), where the sample's leaf
/// (self time) is the path's last function.
#[derive(Debug, Clone)]
pub struct StackDef {
    pub path: Vec<usize>,
    /// Base fraction of the service's samples (all stacks sum to 1).
    pub weight: f64,
    /// Microjoules of one sample of this stack relative to the service's mean (vector units,
    /// memory stalls and idle-ish spinning draw different power).
    pub energy_factor: f64,
}

/// A daily cycle: value 1 + amplitude x sin(2 pi t / day + phase).
#[derive(Debug, Clone, Copy)]
pub struct Daily {
    pub amplitude: f64,
    pub phase: f64,
}

impl Daily {
    pub fn at(&self, t: i64) -> f64 {
        let day = (t.rem_euclid(86_400)) as f64 / 86_400.0;
        1.0 + self.amplitude * (std::f64::consts::TAU * day + self.phase).sin()
    }
}

/// One service of the fleet.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// Hosts the service's virtual host stands for.
    pub hosts: u32,
    /// Busy CPUs per host, on average over the day.
    pub busy_cpus: f64,
    /// Microjoules of an average sample (one 1/19 s of a busy core).
    pub uj_per_sample: f64,
    /// Function 0 is the root.
    pub functions: Vec<Func>,
    /// Stack i is function i's self time.
    pub stacks: Vec<StackDef>,
    /// Load over the day (scales every count, not the shares).
    pub load: Daily,
    /// Functions whose share of the service follows the time of day, with their cycle.
    pub seasonal: Vec<(usize, Daily)>,
}

impl Service {
    /// Builds service `index` with `functions` functions (at least 4).
    pub fn generate(rng: &mut Rng, index: usize, functions: usize, hosts: u32) -> Service {
        let name = format!("svc{index:02}");
        let n = functions.max(4);
        let mut funcs = vec![Func {
            name: format!("{name}::main"),
            file: format!("src/{name}/main.rs"),
            parent: None,
            children: Vec::new(),
        }];
        for i in 1..n {
            // Half the time extend one of the newest functions (depth), otherwise any (breadth).
            let parent = if rng.unit() < 0.5 {
                i - 1 - rng.below(i.min(4))
            } else {
                rng.below(i)
            };
            let module = MODULES[rng.below(MODULES.len())];
            let verb = VERBS[rng.below(VERBS.len())];
            funcs.push(Func {
                name: format!("{name}::{module}::{verb}_{i}"),
                file: format!("src/{module}.rs"),
                parent: Some(parent),
                children: Vec::new(),
            });
            funcs[parent].children.push(i);
        }
        let mut stacks: Vec<StackDef> = (0..n)
            .map(|i| {
                let mut path = vec![i];
                while let Some(p) = funcs[*path.last().expect("non-empty")].parent {
                    path.push(p);
                }
                path.reverse();
                // Heavy-tailed self time, most of it in leaves, as in real profiles.
                let own = (1.6 * rng.normal()).exp();
                let weight = if funcs[i].children.is_empty() {
                    own
                } else {
                    0.15 * own
                };
                StackDef {
                    path,
                    weight,
                    energy_factor: rng.range(0.8, 1.3),
                }
            })
            .collect();
        let total: f64 = stacks.iter().map(|s| s.weight).sum();
        for s in &mut stacks {
            s.weight /= total;
        }
        let busy_cpus = rng.range(0.5, 4.0);
        let mut service = Service {
            name,
            hosts,
            busy_cpus,
            // ~10 W per busy core: joules per 1/19 s sample.
            uj_per_sample: rng.range(8.0, 14.0) / f64::from(FREQUENCY_HZ) * 1e6,
            functions: funcs,
            stacks,
            load: Daily {
                amplitude: rng.range(0.1, 0.4),
                phase: rng.range(0.0, std::f64::consts::TAU),
            },
            seasonal: Vec::new(),
        };
        // Two functions of a visible size whose share swings over the day (batch jobs at night).
        let candidates: Vec<usize> = (1..n)
            .filter(|&f| (0.005..0.2).contains(&service.share(f)))
            .collect();
        for _ in 0..2.min(candidates.len()) {
            let f = candidates[rng.below(candidates.len())];
            if service.seasonal.iter().all(|(g, _)| *g != f) {
                let cycle = Daily {
                    amplitude: rng.range(0.05, 0.3),
                    phase: rng.range(0.0, std::f64::consts::TAU),
                };
                service.seasonal.push((f, cycle));
            }
        }
        service
    }

    /// Inclusive base share of function `f`: the weight of every stack through it.
    pub fn share(&self, f: usize) -> f64 {
        self.through(f).map(|k| self.stacks[k].weight).sum()
    }

    /// Stacks whose path goes through function `f`.
    pub fn through(&self, f: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.stacks.len()).filter(move |&k| self.stacks[k].path.contains(&f))
    }

    /// Whether `a` is `b` or one of its callers.
    pub fn is_ancestor(&self, a: usize, b: usize) -> bool {
        self.stacks[b].path.contains(&a)
    }

    /// Whether `a` and `b` are on one path (one calls the other, directly or not).
    pub fn related(&self, a: usize, b: usize) -> bool {
        self.is_ancestor(a, b) || self.is_ancestor(b, a)
    }

    /// Expected samples of the whole service in one step at average load.
    pub fn samples_per_step(&self, step: i64) -> f64 {
        f64::from(self.hosts) * self.busy_cpus * f64::from(FREQUENCY_HZ) * step as f64
    }

    /// Base weight of stack `k` at time `t`: seasonal functions on its path scale it.
    pub fn seasonal_weight(&self, k: usize, t: i64) -> f64 {
        let path = &self.stacks[k].path;
        self.seasonal
            .iter()
            .filter(|(f, _)| path.contains(f))
            .fold(self.stacks[k].weight, |w, (_, d)| w * d.at(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_root_holds_everything() {
        let s = Service::generate(&mut Rng::new(3), 0, 50, 1000);
        let total: f64 = s.stacks.iter().map(|k| k.weight).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!((s.share(0) - 1.0).abs() < 1e-9);
        for (i, f) in s.functions.iter().enumerate().skip(1) {
            let p = f.parent.expect("non-root has a caller");
            assert!(
                s.share(p) >= s.share(i),
                "a caller holds at least its callee"
            );
        }
    }
}
