//! Turning cumulative energy counters into per-interval deltas: wrap-around (powercap's
//! `max_energy_range_uj`, the MSRs' 32 bits), counters that go backwards, and conversion of raw
//! counts to integer microjoules without losing the fractions between intervals.

use super::Fault;

/// How a counter wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wrap {
    /// Runs from 0 to `max` (powercap's `max_energy_range_uj`) and starts again at 0.
    Range(u64),
    /// Keeps the low `n` bits (the RAPL MSRs: 32).
    Bits(u32),
    /// Never wraps (perf folds the MSR into 64 bits); going down is a fault.
    Never,
}

/// A cumulative counter and its last value.
#[derive(Clone, Debug)]
pub(crate) struct Counter {
    wrap: Wrap,
    prev: Option<u64>,
}

impl Counter {
    pub(crate) fn new(wrap: Wrap) -> Self {
        Self { wrap, prev: None }
    }

    /// Records a new value; returns the increase since the previous one (0 on the first).
    ///
    /// A powercap counter below its previous value wrapped when the implied increase is at most
    /// half the range; a larger one means the counter was reset (or the zone replaced), which is
    /// reported as [`Fault::Backwards`]: the interval's energy is unknown, not negative.
    pub(crate) fn advance(&mut self, value: u64) -> Result<u64, Fault> {
        let prev = self.prev.replace(value);
        let Some(prev) = prev else { return Ok(0) };
        match self.wrap {
            Wrap::Bits(bits) => {
                let mask = if bits >= 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                Ok(value.wrapping_sub(prev) & mask)
            }
            _ if value >= prev => Ok(value - prev),
            Wrap::Range(max) if max > 0 && prev <= max => {
                let delta = (max - prev) + value;
                if delta <= max / 2 {
                    Ok(delta)
                } else {
                    Err(Fault::Backwards)
                }
            }
            _ => Err(Fault::Backwards),
        }
    }
}

/// Converts raw counts to whole microjoules, carrying the fraction into the next interval so
/// that the sum over intervals equals the conversion of the summed counts.
#[derive(Clone, Debug)]
pub(crate) struct ToMicrojoules {
    joules_per_count: f64,
    carry: f64,
}

impl ToMicrojoules {
    pub(crate) fn new(joules_per_count: f64) -> Self {
        Self {
            joules_per_count,
            carry: 0.0,
        }
    }

    pub(crate) fn convert(&mut self, counts: u64) -> u64 {
        let exact = counts as f64 * self.joules_per_count * 1e6 + self.carry;
        if !exact.is_finite() || exact <= 0.0 {
            self.carry = 0.0;
            return 0;
        }
        let whole = exact.floor();
        self.carry = exact - whole;
        whole as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powercap_range_wraps_through_max() {
        let max = 262_143_328_850;
        let mut c = Counter::new(Wrap::Range(max));
        assert_eq!(c.advance(max - 1_000), Ok(0));
        assert_eq!(c.advance(500), Ok(1_500));
        assert_eq!(c.advance(2_500), Ok(2_000));
    }

    #[test]
    fn a_drop_bigger_than_half_the_range_is_a_reset_not_a_wrap() {
        let mut c = Counter::new(Wrap::Range(1_000_000));
        c.advance(600_000).unwrap();
        assert_eq!(c.advance(200_000), Err(Fault::Backwards));
        // The next interval starts from the new value.
        assert_eq!(c.advance(200_500), Ok(500));
    }

    #[test]
    fn msr_counters_wrap_at_32_bits() {
        let mut c = Counter::new(Wrap::Bits(32));
        c.advance(0xFFFF_FF00).unwrap();
        assert_eq!(c.advance(0x0000_0100), Ok(0x200));
        // Upper bits of the register are reserved: ignored.
        assert_eq!(c.advance(0xABCD_0000_0000_0200), Ok(0x100));
    }

    #[test]
    fn perf_counters_never_wrap_so_going_down_is_a_fault() {
        let mut c = Counter::new(Wrap::Never);
        c.advance(100).unwrap();
        assert_eq!(c.advance(99), Err(Fault::Backwards));
    }

    #[test]
    fn conversion_carries_fractions_between_intervals() {
        // 2^-16 J per count (ESU 16): 1 count = 15.2587890625 uJ.
        let mut conv = ToMicrojoules::new(1.0 / 65_536.0);
        let total: u64 = (0..1_000).map(|_| conv.convert(3)).sum();
        assert_eq!(total, (3_000.0 * 1e6 / 65_536.0_f64).floor() as u64);
    }
}
