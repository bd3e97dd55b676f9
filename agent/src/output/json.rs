//! JSON output: the interval profile model as is (see [`crate::profile`] for field meanings).

use crate::profile::Profile;

/// Serializes `profile` as one JSON document.
pub fn render(profile: &Profile) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = serde_json::to_vec(profile)?;
    out.push(b'\n');
    Ok(out)
}
