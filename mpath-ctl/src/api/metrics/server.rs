//! The HTTP server of the metrics: it answers `GET /metrics` with a rendering the event loop
//! makes ([`Scrape`]), and owns nothing of the metrics model.
//!
//! Any local user can reach the port, so it must not be able to starve scrapes or the event
//! loop: at most [`MAX_CONNECTIONS`] connections (more are closed as soon as accepted), each
//! dropped when idle ([`HEADER_READ_TIMEOUT`]) or slow ([`CONNECTION_LIFETIME`]), and a
//! rendering is reused for [`RENDER_REUSE`], so a storm of scrapes costs the loop one render
//! per period.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Mutex, mpsc, oneshot},
};

use super::MetricsError;
use crate::api::admission::Admission;

/// Content type of text exposition format 0.0.4, as Prometheus' own clients send it.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the event loop; Prometheus' default scrape timeout is 10 s,
/// so the scraper still gets a clear 503 rather than its own timeout.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once rather than left waiting behind
/// idle ones.
const MAX_CONNECTIONS: usize = 16;
/// A client that does not send its request headers in this time (also between requests of
/// a kept-alive connection) is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept, however it spends its time (a client that stops reading a
/// response would otherwise hold its slot for ever).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How long one rendering answers every scrape: far below any scrape interval, long enough
/// that a storm of scrapes costs the event loop one render per period.
const RENDER_REUSE: Duration = Duration::from_secs(1);

/// A scrape waiting for the event loop to render the metrics.
#[derive(Debug)]
pub(crate) struct Scrape {
    reply: oneshot::Sender<Result<String, MetricsError>>,
}

impl Scrape {
    /// A scrape, and where its rendering arrives.
    pub(crate) fn new() -> (Scrape, oneshot::Receiver<Result<String, MetricsError>>) {
        let (reply, answer) = oneshot::channel();
        (Scrape { reply }, answer)
    }

    /// Hands the rendered text (or why there is none) to the waiting HTTP request.
    pub(crate) fn answer(self, rendered: Result<String, MetricsError>) {
        // The scraper may have given up meanwhile; nothing to do then.
        let _: Result<_, _> = self.reply.send(rendered);
    }
}

/// Binds the metrics listener; the error names the address.
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(listen)
        .await
        .map_err(|error| MetricsError::Bind {
            addr: listen,
            error,
        })
}

/// The last rendering, shared by the connections: one scrape asks the event loop, those
/// arriving meanwhile or within [`RENDER_REUSE`] get the same text.
struct Renderings {
    scrapes: mpsc::Sender<Scrape>,
    last: Mutex<Option<(Instant, Bytes)>>,
}

/// Why a scrape got no metrics.
enum NoRendering {
    Failed(MetricsError),
    ShuttingDown,
    TimedOut,
}

impl Renderings {
    async fn get(&self) -> Result<Bytes, NoRendering> {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = &*last
            && at.elapsed() < RENDER_REUSE
        {
            return Ok(text.clone());
        }
        let (request, answer) = Scrape::new();
        let scrape = async {
            self.scrapes.send(request).await.ok()?;
            answer.await.ok()
        };
        let text = match tokio::time::timeout(SCRAPE_TIMEOUT, scrape).await {
            Ok(Some(Ok(text))) => Bytes::from(text),
            Ok(Some(Err(e))) => return Err(NoRendering::Failed(e)),
            Ok(None) => return Err(NoRendering::ShuttingDown),
            Err(_) => return Err(NoRendering::TimedOut),
        };
        *last = Some((Instant::now(), text.clone()));
        Ok(text)
    }
}

/// Serves `GET /metrics` until the listener fails, asking the event loop for a render through
/// `scrapes` at most once per [`RENDER_REUSE`]; other paths get 404, other methods 405.
pub(crate) async fn serve(listener: TcpListener, scrapes: mpsc::Sender<Scrape>) {
    let mut admission = Admission::new(
        MAX_CONNECTIONS,
        format!(
            "{MAX_CONNECTIONS} metrics connections open already: closing new ones until one ends"
        ),
    );
    let renderings = Arc::new(Renderings {
        scrapes,
        last: Mutex::new(None),
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Some(slot) = admission.admit() else {
                    continue;
                };
                let renderings = renderings.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| respond(request, renderings.clone()));
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
                        Err(_) => tracing::debug!(
                            "metrics connection open for {CONNECTION_LIFETIME:?}: closed"
                        ),
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::error!("metrics listener accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn respond(
    request: Request<Incoming>,
    renderings: Arc<Renderings>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/metrics" {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "not found: mpathd serves its metrics at /metrics\n".into(),
        ));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    Ok(match renderings.get().await {
        Ok(rendered) => {
            let mut response = Response::new(Full::new(rendered));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(NoRendering::Failed(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(NoRendering::ShuttingDown) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "mpathd is shutting down\n".into(),
        ),
        Err(NoRendering::TimedOut) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "mpathd's event loop did not answer within {} s\n",
                SCRAPE_TIMEOUT.as_secs()
            ),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;
    use crate::{
        api::metrics::tests::{populated, promtool_check, sample, snapshot},
        core::state::InterfaceStatus,
    };

    /// Sends `request` to `addr` over a plain TCP connection; returns the status code, the
    /// content type and the body.
    async fn http(addr: SocketAddr, request: &'static str) -> (u16, String, String) {
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let content_type = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-type")
                        .then(|| value.trim().to_string())
                })
                .unwrap_or_default();
            (status, content_type, body.to_string())
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_over_http_and_404_elsewhere() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (scrapes, mut requests) = mpsc::channel(4);
        tokio::spawn(serve(listener, scrapes));
        // Stands in for the event loop.
        tokio::spawn(async move {
            let metrics = populated();
            while let Some(scrape) = requests.recv().await {
                scrape.answer(
                    metrics.render(&snapshot(InterfaceStatus::Ok, InterfaceStatus::Failed)),
                );
            }
        });

        let (status, content_type, body) = http(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: mpathd\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert_eq!(
            sample(
                &body,
                r#"mpath_interface_state{group="g0",interface="h1",state="failed"}"#
            ),
            Some(1.0),
            "{body}"
        );
        promtool_check(&body);

        let (status, _, body) = http(
            addr,
            "GET / HTTP/1.1\r\nHost: mpathd\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 404);
        assert!(body.contains("/metrics"), "{body}");
        let (status, _, _) = http(
            addr,
            "GET /metricsx HTTP/1.1\r\nHost: mpathd\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 404);
        let (status, _, _) = http(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: mpathd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 405);
    }

    #[tokio::test]
    async fn answers_503_when_the_event_loop_is_gone() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (scrapes, requests) = mpsc::channel(4);
        drop(requests);
        tokio::spawn(serve(listener, scrapes));
        let (status, _, body) = http(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: mpathd\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 503);
        assert_eq!(body, "mpathd is shutting down\n");
    }

    #[tokio::test]
    async fn a_bind_error_names_the_address() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot listen for metrics on {addr}: ")),
            "{message}"
        );
    }
}
