//! The state of BIRD's BGP and OSPF protocols, read from `show protocols all`: reply code 1002
//! heads each protocol (name, protocol, table, state, since, info), 1006 lines detail it.

use serde::{Deserialize, Serialize};

use super::socket::Line;

/// Route counts of a protocol, all its channels together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCounts {
    /// Routes taken from the protocol into BIRD's table.
    pub imported: u64,
    /// Routes announced to it.
    pub exported: u64,
    /// Updates the import policy refused.
    pub filtered: u64,
}

/// One BGP session or OSPF instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolStatus {
    /// Its name (`protocols.bgp.NAME`; `sluice_ospf4` / `sluice_ospf6` for OSPF).
    pub name: String,
    /// `bgp` or `ospf`.
    pub kind: String,
    /// BIRD's state: `up`, `start` (trying), `down` (disabled or failed), `stop`.
    pub state: String,
    /// Since when it is in that state (the router's local time, `YYYY-MM-DD hh:mm:ss`).
    pub since: String,
    /// The neighbour's address (BGP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbor: Option<String>,
    /// BIRD's summary (`Established`, `Active`, `Error: ...`).
    pub info: String,
    /// Route counts.
    pub routes: RouteCounts,
    /// The BGP state machine's state (`Established`, `Active`, `Connect`, `Idle`, `Down`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp_state: Option<String>,
    /// The last error BIRD saw on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `GET /protocols`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protocols {
    /// BGP sessions and OSPF instances, by name.
    pub protocols: Vec<ProtocolStatus>,
}

/// The BGP and OSPF protocols of a `show protocols all` reply.
pub fn parse(lines: &[Line]) -> Vec<ProtocolStatus> {
    let mut out: Vec<ProtocolStatus> = Vec::new();
    // Whether the protocol being read is one to report.
    let mut current = false;
    for l in lines {
        match l.code {
            1002 => {
                current = false;
                let mut words = l.text.split_whitespace();
                let (Some(name), Some(proto), Some(_table), Some(state)) =
                    (words.next(), words.next(), words.next(), words.next())
                else {
                    continue;
                };
                let kind = match proto {
                    "BGP" => "bgp",
                    "OSPF" => "ospf",
                    _ => continue,
                };
                let rest: Vec<&str> = words.collect();
                // `timeformat protocol iso long`: a date and a time; anything else, one word.
                let date = |w: &&str| w.len() == 10 && w.as_bytes()[4] == b'-';
                let n = if rest.first().is_some_and(date) && rest.len() > 1 { 2 } else { 1 };
                let since = rest.iter().take(n).copied().collect::<Vec<_>>().join(" ");
                let info = rest.iter().skip(n).copied().collect::<Vec<_>>().join(" ");
                out.push(ProtocolStatus {
                    name: name.to_owned(),
                    kind: kind.to_owned(),
                    state: state.to_owned(),
                    since,
                    neighbor: None,
                    info,
                    routes: RouteCounts::default(),
                    bgp_state: None,
                    last_error: None,
                });
                current = true;
            }
            1006 if current => {
                let Some(p) = out.last_mut() else { continue };
                detail(p, l.text.trim());
            }
            _ => {}
        }
    }
    out
}

/// One detail line of a protocol.
fn detail(p: &mut ProtocolStatus, text: &str) {
    let Some((key, value)) = text.split_once(':') else { return };
    let value = value.trim();
    let numbers = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect()
    };
    match key.trim() {
        "BGP state" => p.bgp_state = Some(value.to_owned()),
        "Neighbor address" => p.neighbor = Some(value.to_owned()),
        "Last error" => p.last_error = Some(value.to_owned()),
        "Routes" => {
            // `N imported, [N filtered,] N exported, N preferred`
            for part in value.split(',') {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(what)) =
                    (w.next().and_then(|n| n.parse::<u64>().ok()), w.next())
                {
                    match what {
                        "imported" => p.routes.imported += n,
                        "exported" => p.routes.exported += n,
                        "filtered" => p.routes.filtered += n,
                        _ => {}
                    }
                }
            }
        }
        // received, rejected, filtered, ignored, accepted
        "Import updates" => {
            if let Some(f) = numbers(value).get(2) {
                p.routes.filtered += f;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Line> {
        let mut code = 0;
        text.lines()
            .map(|l| {
                if l.len() >= 5 && l.as_bytes()[..4].iter().all(u8::is_ascii_digit) {
                    code = l[..4].parse().unwrap();
                    Line { code, text: l[5..].to_owned() }
                } else {
                    Line { code, text: l[1..].to_owned() }
                }
            })
            .collect()
    }

    #[test]
    fn bgp_and_ospf_are_read_and_the_rest_left_out() {
        // As BIRD 2.0.12 answers, trimmed.
        let reply = lines(
            "2002-Name       Proto      Table      State  Since         Info
1002-sluice_kernel4 Kernel     master4    up     2026-12-07 05:13:50  
1006-  Channel ipv4
     Routes:         0 imported, 1000 exported, 0 preferred
 
1002-up1        BGP        ---        up     2026-12-07 05:14:02  Established   
1006-  BGP state:          Established
     Neighbor address: 10.0.0.2
     Neighbor AS:      65001
   Channel ipv4
     State:          UP
     Routes:         1000 imported, 2 exported, 1000 preferred
     Route change stats:     received   rejected   filtered    ignored   accepted
       Import updates:           1004          0          4          0       1000
 
1002-up2        BGP        ---        start  2026-12-07 05:13:50  Active        Socket: Connection refused
1006-  BGP state:          Active
     Neighbor address: 10.0.0.9
     Last error:       Socket: Connection refused
 
1002-sluice_ospf4 OSPF       master4    up     2026-12-07 05:13:50  Running
1006-  Channel ipv4
     Routes:         3 imported, 0 exported, 3 preferred
 
0000 ",
        );
        let got = parse(&reply);
        assert_eq!(got.len(), 3, "{got:#?}");
        assert_eq!(got[0].name, "up1");
        assert_eq!(got[0].since, "2026-12-07 05:14:02");
        assert_eq!(got[0].info, "Established");
        assert_eq!(got[0].neighbor.as_deref(), Some("10.0.0.2"));
        assert_eq!(got[0].routes, RouteCounts { imported: 1000, exported: 2, filtered: 4 });
        assert_eq!(
            (got[1].state.as_str(), got[1].info.as_str()),
            ("start", "Active Socket: Connection refused")
        );
        assert_eq!(got[1].last_error.as_deref(), Some("Socket: Connection refused"));
        assert_eq!((got[2].kind.as_str(), got[2].routes.imported), ("ospf", 3));
    }
}
