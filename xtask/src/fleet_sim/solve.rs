//! The regression solver's verdict on one reported regression, asked over the collector's real
//! `RunSkill` gRPC (what `wattson suggest --regression ID` asks): the change its report names.
//! The detect bench counts how often that is the injected change; the fleet-sim test checks it
//! for one injected step.

use anyhow::Context as _;
use tonic::transport::Channel;
use wattson_proto::v1::skills_service_client::SkillsServiceClient;
use wattson_proto::v1::{RunSkillRequest, TimeWindow};

/// The solver skill's name (as `wattson suggest --regression` runs it).
pub const SOLVER: &str = "regression-solver";

/// Connects a skills client to the collector at `url`.
pub async fn connect(url: &str) -> anyhow::Result<SkillsServiceClient<Channel>> {
    Ok(SkillsServiceClient::connect(url.to_owned())
        .await
        .with_context(|| format!("connecting to the collector's skills service at {url}"))?
        .max_decoding_message_size(64 << 20))
}

/// The change the solver's report on regression `id` of `service` names as the culprit (None
/// when it names none). `as_of` is the detection time the id is from (0: now).
pub async fn culprit(
    client: &mut SkillsServiceClient<Channel>,
    window: TimeWindow,
    as_of: i64,
    service: &str,
    id: &str,
) -> anyhow::Result<Option<String>> {
    let r = client
        .run_skill(RunSkillRequest {
            skill: SOLVER.into(),
            window: Some(window),
            service: service.into(),
            regression_id: id.into(),
            source_root: String::new(),
            as_of_unix_seconds: as_of,
        })
        .await
        .with_context(|| format!("RunSkill {SOLVER} for regression {id} of {service}"))?
        .into_inner();
    let finding = r
        .findings
        .iter()
        .find(|f| f.regression_id == id)
        .with_context(|| {
            format!(
                "the solver's answer on regression {id} has no finding for it (notes: {})",
                r.notes.join("; ")
            )
        })?;
    Ok(Some(finding.change_id.clone()).filter(|c| !c.is_empty()))
}
