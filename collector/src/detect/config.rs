//! Detection settings: the `[detect]` table of the collector's config file, its defaults,
//! per-service overrides (`[detect.services."NAME"]`) and the checks that name a bad key.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::DetectError;

/// How detection runs, FBDetect's knobs. Durations accept seconds (`300`) or words (`"5m"`,
/// `"14d"`).
///
/// ```toml
/// [detect]
/// step = "5m"
/// alpha = 0.01
/// min_abs_change = 0.00005
/// [detect.services."api"]
/// min_rel_change = 0.02
/// ```
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DetectConfig {
    /// Bucket width of every series, seconds.
    #[serde(deserialize_with = "seconds")]
    pub step: i64,
    /// How far back the series reach (the baseline a change point is judged against), seconds.
    #[serde(deserialize_with = "seconds")]
    pub history: i64,
    /// Less history than this and nothing is reported (one day, so a daily cycle is known).
    #[serde(deserialize_with = "seconds")]
    pub min_history: i64,
    /// Change points that started more than this before `now` are not reported, seconds.
    #[serde(deserialize_with = "seconds")]
    pub analysis_window: i64,
    /// Significance level of the likelihood-ratio test of each change point, per series scan
    /// (Bonferroni over the positions tried).
    pub alpha: f64,
    /// Shortest segment on either side of a change point, seconds.
    #[serde(deserialize_with = "seconds")]
    pub min_segment: i64,
    /// A change must have lasted this long (and not gone back) to be reported, seconds.
    #[serde(deserialize_with = "seconds")]
    pub min_lasting: i64,
    /// Smallest reported change of a share, as a fraction of the service (0.00005 = 0.005%).
    pub min_abs_change: f64,
    /// Smallest reported change relative to the share before (0.005 = 0.5%).
    pub min_rel_change: f64,
    /// Autocorrelation at one day (above that at half a day by as much) that makes a series
    /// seasonal, so its daily profile is removed before testing.
    pub seasonal_min_acf: f64,
    /// Same-direction change points closer than this are one change (a creep or a staged
    /// rollout), seconds.
    #[serde(deserialize_with = "seconds")]
    pub creep_gap: i64,
    /// Dedup: a caller is dropped for a callee that carries at least this fraction of its
    /// added cost; the reported function is the deepest such one.
    pub dedup_flow: f64,
    /// Cost shift: a change whose cost domain (callers' total) moved by less than this fraction
    /// of its own change is work moved between functions.
    pub shift_tolerance: f64,
    /// Root cause: changes up to this long before a change point are candidates, seconds.
    #[serde(deserialize_with = "seconds")]
    pub cause_window: i64,
    /// Root cause: changes up to this many steps after a change point still count (the change
    /// point is located within a step or two).
    pub cause_tolerance_steps: i64,
    /// Root cause: a change is named only with at least this score (0..1).
    pub cause_min_score: f64,
    /// At most this many filtered candidates per funnel stage are listed (all are counted).
    pub max_filtered: usize,
    /// Per-service overrides of the keys above.
    #[serde(skip_serializing)]
    pub services: BTreeMap<String, toml::Table>,
}

impl Default for DetectConfig {
    fn default() -> DetectConfig {
        const HOUR: i64 = 3600;
        DetectConfig {
            step: 300,
            history: 14 * 24 * HOUR,
            min_history: 24 * HOUR,
            analysis_window: 14 * 24 * HOUR,
            alpha: 0.01,
            min_segment: HOUR,
            min_lasting: 3 * HOUR,
            min_abs_change: 0.00005,
            min_rel_change: 0.005,
            seasonal_min_acf: 0.3,
            creep_gap: 12 * HOUR,
            dedup_flow: 0.8,
            shift_tolerance: 0.3,
            cause_window: 6 * HOUR,
            cause_tolerance_steps: 2,
            cause_min_score: 0.5,
            max_filtered: 200,
            services: BTreeMap::new(),
        }
    }
}

impl DetectConfig {
    /// The settings for `service`: these, with its `[detect.services."NAME"]` keys applied.
    /// An override that does not parse is ignored with a warning ([`DetectConfig::validate`]
    /// refuses it at load).
    pub fn for_service(&self, service: &str) -> DetectConfig {
        match self.services.get(service) {
            None => DetectConfig {
                services: BTreeMap::new(),
                ..self.clone()
            },
            Some(over) => match self.merged(over) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(service, error = %e, "detect override ignored");
                    DetectConfig {
                        services: BTreeMap::new(),
                        ..self.clone()
                    }
                }
            },
        }
    }

    fn merged(&self, over: &toml::Table) -> Result<DetectConfig, String> {
        let mut table = toml::Table::try_from(self).map_err(|e| e.to_string())?;
        for (k, v) in over {
            if k == "services" {
                return Err("`services` cannot be nested in a service override".into());
            }
            table.insert(k.clone(), v.clone());
        }
        DetectConfig::deserialize(table).map_err(|e| e.to_string())
    }

    /// Checks every value, the per-service overrides included; the error names the key
    /// (`detect.alpha`, `detect.services."api".step`) and the range it must be in.
    pub fn validate(&self) -> Result<(), DetectError> {
        self.check("detect.")?;
        for (service, over) in &self.services {
            let prefix = format!("detect.services.\"{service}\".");
            let merged = self.merged(over).map_err(|reason| DetectError::Config {
                key: prefix.trim_end_matches('.').to_string(),
                reason,
            })?;
            merged.check(&prefix)?;
        }
        Ok(())
    }

    fn check(&self, prefix: &str) -> Result<(), DetectError> {
        let bad = |key: &str, reason: String| {
            Err(DetectError::Config {
                key: format!("{prefix}{key}"),
                reason,
            })
        };
        if self.step <= 0 || 86_400 % self.step != 0 {
            return bad(
                "step",
                format!(
                    "{} s must be > 0 and divide a day (e.g. 60, 300, 600)",
                    self.step
                ),
            );
        }
        let spans = [
            ("history", self.history),
            ("min_history", self.min_history),
            ("analysis_window", self.analysis_window),
            ("min_segment", self.min_segment),
            ("min_lasting", self.min_lasting),
            ("creep_gap", self.creep_gap),
            ("cause_window", self.cause_window),
        ];
        for (key, v) in spans {
            if v < self.step {
                return bad(
                    key,
                    format!("{v} s is shorter than one step ({} s)", self.step),
                );
            }
        }
        if self.min_history > self.history {
            return bad(
                "min_history",
                format!(
                    "{} s exceeds history ({} s)",
                    self.min_history, self.history
                ),
            );
        }
        let fractions = [
            ("alpha", self.alpha, false),
            ("dedup_flow", self.dedup_flow, true),
            ("shift_tolerance", self.shift_tolerance, true),
            ("cause_min_score", self.cause_min_score, true),
            ("seasonal_min_acf", self.seasonal_min_acf, true),
        ];
        for (key, v, closed) in fractions {
            let ok = v.is_finite() && v > 0.0 && (v < 1.0 || (closed && v <= 1.0));
            if !ok {
                let range = if closed { "(0, 1]" } else { "(0, 1)" };
                return bad(key, format!("{v} must be in {range}"));
            }
        }
        for (key, v) in [
            ("min_abs_change", self.min_abs_change),
            ("min_rel_change", self.min_rel_change),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("{v} must be a finite number >= 0"));
            }
        }
        if self.cause_tolerance_steps < 0 {
            return bad(
                "cause_tolerance_steps",
                format!("{} must be >= 0", self.cause_tolerance_steps),
            );
        }
        Ok(())
    }

    /// Buckets of `seconds` at this step, at least one.
    pub(crate) fn buckets(&self, seconds: i64) -> usize {
        (seconds / self.step).max(1) as usize
    }
}

/// Seconds from an integer or a humantime string ("5m", "14d").
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Span {
        Seconds(i64),
        Words(String),
    }
    match Span::deserialize(d)? {
        Span::Seconds(s) => Ok(s),
        Span::Words(w) => humantime::parse_duration(&w)
            .map(|d| d.as_secs() as i64)
            .map_err(|e| {
                serde::de::Error::custom(format!("{w:?}: {e} (e.g. 300, \"5m\", \"14d\")"))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_words_parse() {
        DetectConfig::default().validate().unwrap();
        let c: DetectConfig =
            toml::from_str("step = \"10m\"\nhistory = \"7d\"\nmin_history = 86400").unwrap();
        assert_eq!(
            (c.step, c.history, c.min_history),
            (600, 7 * 86_400, 86_400)
        );
        assert!(toml::from_str::<DetectConfig>("alpah = 0.1").is_err());
    }

    #[test]
    fn bad_values_name_their_key() {
        let c: DetectConfig = toml::from_str("alpha = 1.5").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("detect.alpha") && e.contains("(0, 1)"), "{e}");
        let c: DetectConfig = toml::from_str("step = 7").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("detect.step")
        );
        let c: DetectConfig = toml::from_str("[services.api]\nstep = 0").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("detect.services.\"api\".step"), "{e}");
        let c: DetectConfig = toml::from_str("[services.api]\nstpe = 60").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("detect.services.\"api\"") && e.contains("stpe"),
            "{e}"
        );
    }

    #[test]
    fn overrides_apply_to_their_service_only() {
        let c: DetectConfig =
            toml::from_str("alpha = 0.02\n[services.api]\nmin_rel_change = 0.1\nstep = \"1m\"")
                .unwrap();
        c.validate().unwrap();
        let api = c.for_service("api");
        assert_eq!((api.step, api.min_rel_change, api.alpha), (60, 0.1, 0.02));
        assert!(api.services.is_empty());
        let web = c.for_service("web");
        assert_eq!((web.step, web.min_rel_change), (300, 0.005));
    }
}
