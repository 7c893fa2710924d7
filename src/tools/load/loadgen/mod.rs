//! Load generator: many webrtc-rs clients ([`crate::tools::load::client`], or the light ones of
//! [`crate::tools::load::light`]) in one process, against a running front or one it starts
//! itself.
//!
//! *Load mode* puts N clients into M conversations (client `i` joins conversation `i % M`), the
//! first S members of each conversation speak (probe payloads at 50 packets/s, see
//! [`crate::tools::load::client::probe_payload`]), everyone offers K receive slots. Joins come in two phases:
//! the first member of every conversation (its join starts the conversation's worker: a *spawn*
//! join), then everyone else (the worker is up: a *warm* join), spread over the ramp-up time.
//! After a warm-up it measures a steady-state window: forwarded packets/s at the listeners,
//! one-way latency sender → SFU → listener, the delay inside the SFU (the workers' own
//! histogram, from `/metrics`), loss per listener, and the CPU seconds and memory of front and
//! every worker from `/proc`.
//!
//! *Churn mode* connects and closes clients many times (in one warm conversation with an anchor
//! speaker, or each in a new conversation) and compares front's and the workers' RSS, open fds
//! and threads before and after, once the server has let go of every closed session.
//!
//! Every wait has a deadline, and a front started here is stopped (SIGTERM, then SIGKILL of it
//! and its workers, by pid) whatever happens.
//!
//! | module | what |
//! |---|---|
//! | `options` | the command line ([`Options`], clap) and its validation |
//! | `server` | the front under test: started or attached to, its `/metrics` |
//! | `sample` | `/proc` samples of front, its workers and the CPUs |
//! | `member` | one client of a run, full or light ([`ClientKind`]) |
//! | `load` | load mode: joins, warm-up, the windows |
//! | `window` | one measurement window: forwarding, loss, latency, CPU, drops |
//! | `drops` | the drop counters: `/metrics` `beep_*drop*` series, kernel UDP drops |
//! | `hog` | CPU hogs for `--contention` |
//! | `churn` | churn mode |
//! | `report` | the report ([`Report`], the JSON), its distributions, [`print_summary`] |

mod churn;
mod drops;
mod hog;
mod load;
mod member;
mod options;
mod report;
mod sample;
mod server;
mod window;

use anyhow::Context;

pub use drops::{DropCounter, Drops, UdpDrops};
pub use hog::HogTarget;
pub use member::ClientKind;
pub use options::Options;
pub use report::{
    ChurnReport, Contention, Dist, Forwarding, JoinDists, JoinRecord, JoinReport, Loss, Machine,
    ProcDelta, Report, ServerReport, SfuDelay, Snapshot, WindowReport, print_summary,
};
use server::Server;

/// One run as `o` says, start to end: the report, also written as JSON when `--json` asks.
pub async fn run(o: Options) -> anyhow::Result<Report> {
    let mut server = Server::start(&o).await?;
    let mut report = Report {
        command: std::env::args().collect(),
        machine: Machine::read(),
        clients: o.clients,
        conversations: o.conversations,
        speakers: o.speakers,
        slots: o.slots,
        front_log: server.log_path(),
        ..Default::default()
    };
    let result = if o.churn > 0 {
        report.mode = "churn".into();
        churn::churn(&o, &server, &mut report).await
    } else {
        report.mode = "load".into();
        load::load(&o, &server, &mut report).await
    };
    server.stop();
    if result.is_err() && !server.log_path().is_empty() {
        eprintln!("front log kept: {}", server.log_path());
    }
    result?;
    if let (false, Some(dir)) = (o.keep_log, &server.runtime_dir) {
        let _ = std::fs::remove_dir_all(dir);
        report.front_log.clear();
    }
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}
