//! Reading mpathd's Prometheus endpoint in a lab.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use mpath_lab::Netns;

/// Where mpathd serves its metrics by default (inside the lab's host namespace).
pub const METRICS: &str = "127.0.0.1:9798";

/// GET /metrics from inside `ns`; `None` while nothing answers there.
pub fn scrape(ns: &Netns) -> Option<String> {
    let _inside = ns.enter().expect("enter the host namespace");
    let mut stream = TcpStream::connect(METRICS).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: mpathd\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Some(body.to_string())
}

/// The value of one series, written as the encoder writes it (labels sorted by name).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.parse().expect("a sample value"))
    })
}
