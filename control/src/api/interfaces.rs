//! Interfaces: the kernel's, with what the dataplane serves on each; routed ports attached and
//! detached through the configuration.

use sluice_dataplane::PinDir;
use sluice_store::{Interface, XdpMode};

use super::{
    Api, Problem,
    config::commit_change,
    http::{Call, Reply, ok},
    models,
};

/// `GET /interfaces`.
pub(super) fn list(api: &Api, _: &Call<'_>) -> Reply {
    let config = api.store.config()?;
    let mut list = interfaces(&api.pin);
    for i in &mut list {
        i.routed = if api.fixed_ports.contains(&i.name) {
            Some("fixed".into())
        } else if config.interfaces.get(&i.name).is_some_and(|c| c.attach) {
            Some("configured".into())
        } else {
            None
        };
    }
    ok(list)
}

/// `POST /interfaces/{name}/attach`: makes it a routed port of the configuration (committed at
/// once, `?confirm_seconds=N` to confirm), in the XDP mode asked for.
pub(super) fn attach(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    if let Some(m) = sluice_store::interface_name_problem(name) {
        return Err(Problem::field("name", format!("interface name: {m}")));
    }
    if nix::net::if_::if_nametoindex(name).is_err() {
        let detail = format!("no interface {name:?} on this router");
        return Err(Problem::not_found("no-interface", detail));
    }
    let b: models::Attach =
        if call.request.body.is_empty() { models::Attach::default() } else { call.body()? };
    let mut config = api.store.config()?;
    let entry = config.interfaces.entry(name.to_owned()).or_insert_with(|| Interface {
        attach: true,
        xdp_mode: XdpMode::Auto,
        addresses: Vec::new(),
        mtu: None,
        up: true,
    });
    let mode = b.xdp_mode.unwrap_or(entry.xdp_mode);
    let unchanged = entry.attach && entry.xdp_mode == mode;
    entry.attach = true;
    entry.xdp_mode = mode;
    if !unchanged {
        commit_change(api, call, &config, format!("attach {name}"))?;
    }
    ok(models::Attached { name: name.to_owned(), routed: "configured".into(), xdp_mode: mode })
}

/// `POST /interfaces/{name}/detach`: takes a routed port of the configuration out of routing.
pub(super) fn detach(api: &Api, call: &Call<'_>) -> Reply {
    let name = call.param();
    if api.fixed_ports.iter().any(|p| p == name) {
        return Err(Problem::conflict(
            "fixed-port",
            format!("{name} is attached by the daemon's --attach option: remove it there"),
        ));
    }
    let mut config = api.store.config()?;
    match config.interfaces.get_mut(name) {
        Some(i) if i.attach => i.attach = false,
        _ => {
            let detail = format!("{name} is not a routed port of the configuration");
            return Err(Problem::not_found("not-routed", detail));
        }
    }
    commit_change(api, call, &config, format!("detach {name}"))?;
    ok(models::Detached { name: name.to_owned(), routed: None })
}

/// The kernel's interfaces, with what the dataplane knows of each (not yet whether routed).
fn interfaces(pin: &PinDir) -> Vec<models::InterfaceInfo> {
    use nix::net::if_::InterfaceFlags as F;
    let attached = crate::show::stats(pin).map(|s| s.interfaces).unwrap_or_default();
    // getifaddrs answers for this process's network namespace (sysfs may show another).
    let mut links: std::collections::BTreeMap<String, (F, Option<String>)> =
        std::collections::BTreeMap::new();
    for a in nix::ifaddrs::getifaddrs().into_iter().flatten() {
        let mac = a
            .address
            .as_ref()
            .and_then(|s| s.as_link_addr())
            .and_then(nix::sys::socket::LinkAddr::addr)
            .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"));
        let e = links.entry(a.interface_name.clone()).or_insert((a.flags, None));
        e.0 |= a.flags;
        if mac.is_some() {
            e.1 = mac;
        }
    }
    links
        .into_iter()
        .map(|(name, (flags, mac))| {
            let dp = attached.iter().find(|i| i.name == name);
            let state = if !flags.contains(F::IFF_UP) {
                "down"
            } else if flags.contains(F::IFF_RUNNING) {
                "up"
            } else {
                "no-carrier"
            };
            models::InterfaceInfo {
                ifindex: nix::net::if_::if_nametoindex(name.as_str()).ok(),
                name,
                state: state.into(),
                mac,
                mtu: dp.map(|i| i.mtu),
                xdp_mode: dp.map(|i| i.xdp_mode.to_owned()),
                routed: None,
                egress_not_ready: dp.and_then(|i| i.egress_not_ready.clone()),
            }
        })
        .collect()
}
