//! Diagnostics from the router itself: `ping` and `traceroute` towards an address.

use super::{
    Api, Problem,
    http::{Call, Reply, ok},
    models,
};

/// `POST /diagnostics/ping`.
pub(super) fn ping(_: &Api, call: &Call<'_>) -> Reply {
    let b: models::Diagnostic = call.body()?;
    ok(diagnose(true, b.target)?)
}

/// `POST /diagnostics/traceroute`.
pub(super) fn traceroute(_: &Api, call: &Call<'_>) -> Reply {
    let b: models::Diagnostic = call.body()?;
    ok(diagnose(false, b.target)?)
}

/// Runs `ping` (4 echo requests) or `traceroute` (numeric, 15 hops at most) from the router
/// towards an address (an address only: no name is looked up, no shell is involved), bounded
/// in time; its output.
fn diagnose(ping: bool, target: std::net::IpAddr) -> Result<models::DiagnosticOutput, Problem> {
    if target.is_unspecified() || target.is_multicast() {
        return Err(Problem::field("target", format!("{target} cannot be probed")));
    }
    let addr = target.to_string();
    let (program, args): (&str, Vec<&str>) = if ping {
        ("ping", vec!["-n", "-c", "4", "-i", "0.2", "-W", "1", &addr])
    } else {
        ("traceroute", vec!["-n", "-q", "1", "-w", "1", "-m", "15", &addr])
    };
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Problem::unavailable("diagnostics", format!("{program}: {e}")))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(127) {
        let detail = format!("{program} is not installed on this router");
        return Err(Problem::unavailable("diagnostics", detail));
    }
    Ok(models::DiagnosticOutput {
        command: format!("{program} {}", args.join(" ")),
        ok: out.status.success(),
        output: text,
    })
}
