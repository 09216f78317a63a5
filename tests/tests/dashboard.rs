//! The shipped Grafana dashboard (dist/grafana/mpath.json) against a real Prometheus (Debian's
//! package) scraping a running mpathd in a lab through a failover and its failback: every
//! query of every panel and variable must return data, so that no panel of the dashboard an
//! administrator imports stays empty or names a metric mpathd does not export.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use mpath_lab::{Lab, Netns};
use mpath_tests::{
    daemon::{Mpathd, all_ok, h1_failed_over, three_nic_config},
    dist_path,
    metrics::METRICS,
};
use serde_json::Value;

/// Where Prometheus listens, inside the lab's host namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
/// What the panels' `$__rate_interval` stands for at a 1 s scrape interval (Grafana takes at
/// least four scrape intervals).
const RATE_INTERVAL: &str = "15s";

/// A Prometheus server in `ns`, scraping mpathd every second as job `mpath`; stopped and its
/// data removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    fn start(ns: &Netns) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("mpath-prometheus-{}", ns.name()));
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: mpath\n    static_configs:\n      \
                 - targets: ['{METRICS}']\n"
            ),
        )
        .unwrap();
        let child = ns
            .daemon_command("prometheus")
            .unwrap()
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(dir.join("log")).unwrap()))
            .spawn()
            .expect("prometheus (Debian package prometheus; `cargo xtask setup` installs it)");
        Prometheus { child, dir }
    }

    /// The result of an instant query, or why there is none.
    fn query(&self, ns: &Netns, query: &str) -> Result<Vec<Value>, String> {
        let body = get(ns, &format!("/api/v1/query?query={}", encode(query)))?;
        let reply: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if reply["status"] != "success" {
            return Err(format!("{reply}"));
        }
        Ok(reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _: Result<(), _> = self.child.kill();
        let _: Result<_, _> = self.child.wait();
        let _: Result<(), _> = fs::remove_dir_all(&self.dir);
    }
}

/// GET `path` from Prometheus inside `ns`: the body of a 200 answer.
fn get(ns: &Netns, path: &str) -> Result<String, String> {
    let _inside = ns.enter().map_err(|e| e.to_string())?;
    let mut stream = TcpStream::connect(PROMETHEUS).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: prometheus\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {response}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{head}\n{body}"));
    }
    // Prometheus answers small bodies whole and large ones chunked.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A panel's or variable's query as Grafana sends it with every host and group selected.
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$instance", ".*")
        .replace("$group", ".*")
}

/// `label_values(SELECTOR, LABEL)` as a query that returns one series per value.
fn label_values(query: &str) -> String {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {query}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    format!("count by ({}) ({})", label.trim(), selector.trim())
}

/// Every panel's queries, with the panel's title.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            queries.push((
                panel["title"].as_str().unwrap().to_string(),
                expr.to_string(),
            ));
        }
    }
    queries
}

#[test]
fn every_query_of_the_shipped_dashboard_returns_data_from_a_running_mpathd() {
    let dashboard: Value =
        serde_json::from_str(&fs::read_to_string(dist_path("grafana/mpath.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut queries = panel_queries(&dashboard);
    assert!(queries.len() >= 20, "{queries:?}");
    let variables: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["query"]["query"].as_str()?)))
        .map(|(name, query)| (format!("variable ${name}"), label_values(query)))
        .collect();
    assert_eq!(variables.len(), 2, "host and group: {variables:?}");
    queries.extend(variables);

    let lab = Lab::builder().nics(3).behind_router().build().expect("lab");
    let config = three_nic_config(700) + mpath_lab::ROUTE_BEHIND_ROUTER;
    let mut daemon = Mpathd::start_all_ok(lab.host(), &config);
    let prometheus = Prometheus::start(lab.host());
    // Events for the counters' increases: a failover and its failback.
    sleep(Duration::from_secs(5));
    lab.cut("h1").unwrap();
    daemon.wait_until("h1 failed over", h1_failed_over);
    lab.restore("h1").unwrap();
    daemon.wait_until("every NIC ok again", all_ok);

    // Prometheus needs a few scrapes after the events for rates over them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut empty = Vec::new();
    loop {
        empty.clear();
        for (title, expr) in &queries {
            let sent = as_sent(expr);
            match prometheus.query(lab.host(), &sent) {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => empty.push(format!("{title}: `{sent}`: no data")),
                Err(e) => empty.push(format!("{title}: `{sent}`: {e}")),
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        sleep(Duration::from_secs(2));
    }
    assert!(
        empty.is_empty(),
        "queries without data after a minute:\n{}\nprometheus:\n{}",
        empty.join("\n"),
        prometheus.log()
    );
}
