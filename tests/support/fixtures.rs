//! The byte-exact server replies in `tests/data/server-replies.json` (copied from
//! `shared/fixtures`: Redis 7.0.15 and Dragonfly 1.40.1).

#![allow(dead_code)]

/// One captured exchange.
pub struct Capture {
    pub server: String,
    pub step: String,
    pub command: Vec<Vec<u8>>,
    pub reply: Vec<u8>,
}

fn latin1(s: &str) -> Vec<u8> {
    s.chars().map(|c| c as u32 as u8).collect()
}

/// Every capture of both servers, in file order.
pub fn captures() -> Vec<Capture> {
    let text = include_str!("../data/server-replies.json");
    let json: serde_json::Value = serde_json::from_str(text).expect("fixture json");
    let mut out = Vec::new();
    for (server, steps) in json.as_object().expect("object") {
        for step in steps.as_array().expect("array") {
            out.push(Capture {
                server: server.clone(),
                step: step["step"].as_str().unwrap().to_string(),
                command: step["command"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| latin1(a.as_str().unwrap()))
                    .collect(),
                reply: latin1(step["reply"].as_str().unwrap()),
            });
        }
    }
    out
}

/// The reply of `step` on `server` (a prefix of the server name is enough).
pub fn reply(server: &str, step: &str) -> Vec<u8> {
    captures()
        .into_iter()
        .find(|c| c.server.starts_with(server) && c.step == step)
        .unwrap_or_else(|| panic!("no fixture {server}/{step}"))
        .reply
}
