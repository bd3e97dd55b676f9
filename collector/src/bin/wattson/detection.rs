//! `wattson regressions` and `wattson changes record|list`: the detection service's answers
//! as tables (or `--json` arrays of the wire messages), and recording change events.

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use wattson_collector::report;
use wattson_proto::v1::{Change, ListChangesRequest, ListRegressionsRequest, RecordChangeRequest};

use crate::args::{as_of, time_window};
use crate::connect::{Detection, status};
use crate::output::Output;

#[derive(clap::Args, Debug)]
pub struct RegressionsArgs {
    /// Regressions that started at or after this time (`-2h`, Unix seconds, RFC 3339).
    #[arg(long, default_value = "-14d", allow_hyphen_values = true)]
    from: String,
    /// ... and before this time.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    to: String,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// Also improvements and the candidates a filter removed (with the filter and its
    /// figures), and the funnel: how many candidates each stage removed.
    #[arg(long)]
    all: bool,
    /// Detect as of this past time, on everything stored now (late data included): what a
    /// pass then would have said. A full pass, not the collector's cached one.
    #[arg(long, allow_hyphen_values = true)]
    as_of: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ChangesArgs {
    #[command(subcommand)]
    command: ChangesCommand,
}

#[derive(Subcommand, Debug)]
enum ChangesCommand {
    /// Record a change event (a candidate root cause); prints its id.
    Record(RecordArgs),
    /// Changes in a window, recorded and automatic (deploys of newly seen builds), oldest first.
    List(ListArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum KindArg {
    Deploy,
    Config,
    Experiment,
    Commit,
}

impl KindArg {
    fn word(self) -> &'static str {
        match self {
            KindArg::Deploy => "deploy",
            KindArg::Config => "config",
            KindArg::Experiment => "experiment",
            KindArg::Commit => "commit",
        }
    }
}

#[derive(clap::Args, Debug)]
struct RecordArgs {
    /// Service that changed (as profiles name it).
    #[arg(long)]
    service: String,
    /// When the change took effect (`now`, `-2h`, Unix seconds, RFC 3339).
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    at: String,
    /// What changed, in a few words.
    #[arg(long)]
    title: String,
    /// Id to record it under (e.g. a PR or ticket number); drawn by the collector when omitted.
    #[arg(long)]
    id: Option<String>,
    /// What kind of change.
    #[arg(long, value_enum, default_value = "deploy")]
    kind: KindArg,
    /// Build id it shipped: it then is the same change as the collector's automatic deploy of
    /// that build.
    #[arg(long)]
    build_id: Option<String>,
    /// A function the change touched, as profiles name it (repeat for several).
    #[arg(long, value_name = "FUNCTION")]
    touched: Vec<String>,
    /// Who made it.
    #[arg(long)]
    author: Option<String>,
    /// Link to the change (PR, ticket, dashboard).
    #[arg(long)]
    url: Option<String>,
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    /// Start of the window.
    #[arg(long, default_value = "-30d", allow_hyphen_values = true)]
    from: String,
    /// End of the window.
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    to: String,
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
}

/// A refusal, with the fields it names said as this command's flags.
fn refused(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", flag_names(e.message()), e.code())
}

/// The collector names a refused field as the proto does (`change.title`); say the flag.
fn flag_names(message: &str) -> String {
    const FLAGS: [(&str, &str); 10] = [
        ("as_of_unix_seconds", "--as-of"),
        ("change.at_unix_seconds", "--at"),
        ("change.build_id", "--build-id"),
        ("change.service", "--service"),
        ("change.title", "--title"),
        ("change.kind", "--kind"),
        ("change.touched", "--touched"),
        ("change.author", "--author"),
        ("change.url", "--url"),
        ("change.id", "--id"),
    ];
    let mut m = message.to_string();
    for (field, flag) in FLAGS {
        m = m.replace(field, flag);
    }
    m
}

pub async fn regressions(
    client: &mut Detection,
    a: RegressionsArgs,
    out: &Output,
) -> anyhow::Result<()> {
    let r = client
        .list_regressions(ListRegressionsRequest {
            window: Some(time_window(&a.from, &a.to, "--from", "--to")?),
            service: a.service.unwrap_or_default(),
            all: a.all,
            as_of_unix_seconds: as_of(a.as_of.as_deref())?,
        })
        .await
        .map_err(refused)?
        .into_inner();
    if out.json() && r.regressions.is_empty() && !r.note.is_empty() {
        eprintln!("no regressions: {}", r.note);
    }
    out.emit(report::regressions_json(&r), |w| {
        report::regressions_table(&r, a.all, w)
    })
}

pub async fn changes(client: &mut Detection, a: ChangesArgs, out: &Output) -> anyhow::Result<()> {
    match a.command {
        ChangesCommand::Record(a) => record(client, a).await,
        ChangesCommand::List(a) => {
            let r = client
                .list_changes(ListChangesRequest {
                    window: Some(time_window(&a.from, &a.to, "--from", "--to")?),
                    service: a.service.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            out.emit(report::changes_json(&r), |w| report::changes_table(&r, w))
        }
    }
}

async fn record(client: &mut Detection, a: RecordArgs) -> anyhow::Result<()> {
    let at = report::parse_time(&a.at, report::now()).context("--at")?;
    let change = Change {
        id: a.id.unwrap_or_default(),
        service: a.service,
        at_unix_seconds: at,
        title: a.title,
        kind: a.kind.word().to_string(),
        build_id: a.build_id.unwrap_or_default(),
        touched: a.touched,
        author: a.author.unwrap_or_default(),
        url: a.url.unwrap_or_default(),
        automatic: false,
    };
    let r = client
        .record_change(RecordChangeRequest {
            change: Some(change),
        })
        .await
        .map_err(refused)?
        .into_inner();
    println!("{}", r.id);
    if r.merged {
        eprintln!("merged with the collector's automatic deploy of that build");
    }
    Ok(())
}
