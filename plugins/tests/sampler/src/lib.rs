//! A plugin that reports what it receives, for the host's tests. Its configuration is a number:
//! the sampling it asks for (`set-sampling`), 0 for none. After each batch holding samples it
//! logs one line, `samples N every E syn S`: how many samples the batch held, the rate the last
//! one said, and how many had the SYN flag (0x02) without ACK (0x10). For each route added it
//! writes a count rule on the route's prefix (the tests time how soon that rule appears).

use sluice_plugin_sdk::{Action, Direction, Event, Guest, Level, Op, filter, log};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

struct Sampler;

impl Guest for Sampler {
    fn init(config: String) -> Result<Vec<Op>, String> {
        let every: u32 = config
            .trim()
            .parse()
            .map_err(|_| format!("configuration: {config:?} is not a number"))?;
        Ok(if every == 0 { Vec::new() } else { vec![Op::SetSampling(every)] })
    }

    fn handle(events: Vec<Event>) -> Result<Vec<Op>, String> {
        let (mut samples, mut every, mut syn) = (0u64, 0u32, 0u64);
        let mut ops = Vec::new();
        for event in events {
            match event {
                Event::Sample(s) => {
                    samples += 1;
                    every = s.every;
                    if s.tcp_flags & (SYN | ACK) == SYN {
                        syn += 1;
                    }
                }
                Event::Route(r) if r.added => {
                    ops.push(filter(Direction::Dst, &r.prefix, Action::Count));
                }
                _ => {}
            }
        }
        if samples > 0 {
            log(Level::Info, &format!("samples {samples} every {every} syn {syn}"));
        }
        Ok(ops)
    }
}

sluice_plugin_sdk::export!(Sampler);
