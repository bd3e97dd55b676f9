//! Per-CPU busy time from `/proc/stat`, for recordings that sample only some processes
//! (`record --pid`): the CPU time the sampler did not see still drew power, and must get its
//! share of a package's energy instead of the filtered process getting all of it.

use std::{collections::BTreeMap, path::Path};

use super::EnergyError;

/// Cumulative (busy, total) clock ticks per CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes(BTreeMap<u32, (u64, u64)>);

impl CpuTimes {
    /// Reads `/proc/stat` (or a fixture file).
    pub fn read(path: &Path) -> Result<Self, EnergyError> {
        let text = std::fs::read_to_string(path).map_err(|e| EnergyError::io(path, e))?;
        Ok(Self::parse(&text))
    }

    /// Parses the `cpuN user nice system idle iowait irq softirq steal ...` lines. Busy is
    /// user + nice + system + irq + softirq + steal (guest time is already inside user).
    pub fn parse(text: &str) -> Self {
        let mut cpus = BTreeMap::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let Some(cpu) = fields
                .next()
                .and_then(|name| name.strip_prefix("cpu"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let v: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
            if v.len() < 7 {
                continue;
            }
            let steal = v.get(7).copied().unwrap_or(0);
            let busy = v[0] + v[1] + v[2] + v[5] + v[6] + steal;
            cpus.insert(cpu, (busy, busy + v[3] + v[4]));
        }
        Self(cpus)
    }

    /// Busy fraction (0..=1) of each CPU between `earlier` and `self`.
    pub fn busy_since(&self, earlier: &Self) -> BTreeMap<u32, f64> {
        self.0
            .iter()
            .filter_map(|(&cpu, &(busy, total))| {
                let &(busy0, total0) = earlier.0.get(&cpu)?;
                let dt = total.checked_sub(total0)?;
                let db = busy.checked_sub(busy0)?;
                (dt > 0).then(|| (cpu, (db as f64 / dt as f64).min(1.0)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_fraction_per_cpu_from_two_proc_stat_snapshots() {
        let before = CpuTimes::parse(
            "cpu  10 0 10 100 0 0 0 0 0 0\n\
             cpu0 5 0 5 50 0 0 0 0 0 0\n\
             cpu1 5 0 5 50 0 0 0 0 0 0\nintr 1 2 3\n",
        );
        let after = CpuTimes::parse(
            "cpu0 80 0 5 50 0 0 0 0 0 0\n\
             cpu1 5 0 20 90 5 0 0 0 0 0\n",
        );
        let busy = after.busy_since(&before);
        assert_eq!(busy[&0], 1.0);
        assert_eq!(busy[&1], 15.0 / 60.0);
        // A counter that went down (CPU hot-plug) gives no figure rather than a negative one.
        assert!(before.busy_since(&after).is_empty());
    }
}
