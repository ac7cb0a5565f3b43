//! `tandem tail`: follows a thread or the inbox over the WebSocket hub and
//! prints every server frame as one JSON line on stdout.
//!
//! The socket is the fast path and the store the record (see
//! `docs/websocket.md`): after any disconnect the tail reconnects with
//! backoff and resubscribes from the last `seq` it printed; a gap the hub
//! will not replay (`recovered: false`) is paged over REST. So each message
//! is printed once, in order, whatever happens to the connection. Status
//! goes to stderr, never stdout, so stdout stays a clean stream for `jq`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tandem_model::ThreadId;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

/// Opening the socket (TCP, upgrade) may take this long before it is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Each REST page may take this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the tail pings the server, so that a dead link is noticed even
/// when the thread is quiet.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Silence after which the connection is taken for dead.
const DEAD_AFTER: Duration = Duration::from_secs(45);
/// How long a close frame waits for the server's answer on exit.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Messages asked for per REST page (the server's maximum).
const PAGE: u32 = 500;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `tandem tail`: exactly one of `--thread` and `--inbox`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("topic").required(true).args(["thread", "inbox"])))]
pub struct TailArgs {
    /// Follow this thread's messages (and its status, typing, presence).
    #[arg(long, value_name = "ID")]
    thread: Option<ThreadId>,
    /// Start after this seq: every later stored message is replayed first.
    /// Without it, only what is posted from now on is printed.
    #[arg(long, value_name = "N", requires = "thread", value_parser = clap::value_parser!(i64).range(0..))]
    after_seq: Option<i64>,
    /// Follow the inbox: every open item, then every change (staff tokens).
    #[arg(long)]
    inbox: bool,
    /// The server's base URL.
    #[arg(long, env = "TANDEM_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API token.
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    token: String,
}

/// Follows the topic until Ctrl-C or SIGTERM (`Ok`) or an error that
/// retrying cannot fix (`Err`).
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let endpoints = Endpoints::new(&args.url)?;
    let authorization = HeaderValue::from_str(&format!("Bearer {}", args.token))
        .context("--token: not a valid header value")?;
    let mut signals = Signals::new().context("listening for signals")?;
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let mut tail = Tail {
        topic: match args.thread {
            Some(id) => Topic::Thread(id),
            None => Topic::Inbox,
        },
        cursor: args.after_seq,
        endpoints,
        authorization,
        http,
        stdout: std::io::stdout(),
    };
    let mut backoff = Backoff::new();
    loop {
        status(format_args!("connecting to {}", tail.endpoints.ws));
        let why = match tail.session(&mut signals, &mut backoff).await? {
            Flow::Stop => return Ok(()),
            Flow::Lost(why) => why,
            Flow::Go => "the connection ended".to_owned(),
        };
        let delay = backoff.next_delay();
        status(format_args!(
            "{why}; reconnecting in {} ms",
            delay.as_millis()
        ));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = signals.recv() => return Ok(()),
        }
    }
}

fn status(line: std::fmt::Arguments<'_>) {
    eprintln!("tandem tail: {line}");
}

#[derive(Debug, Clone, Copy)]
enum Topic {
    Thread(ThreadId),
    Inbox,
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Thread(id) => write!(f, "thread:{id}"),
            Self::Inbox => f.write_str("inbox"),
        }
    }
}

/// What to do next.
enum Flow {
    /// Carry on.
    Go,
    /// Ctrl-C or SIGTERM.
    Stop,
    /// The connection is gone or useless: reconnect.
    Lost(String),
}

struct Tail {
    topic: Topic,
    /// The last seq printed (or known to be passed) on the thread; the
    /// `after_seq` of the next subscribe.
    cursor: Option<i64>,
    endpoints: Endpoints,
    authorization: HeaderValue,
    http: reqwest::Client,
    stdout: std::io::Stdout,
}

impl Tail {
    /// One connection: connect, subscribe, print until it ends.
    async fn session(
        &mut self,
        signals: &mut Signals,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Flow> {
        let mut request = self
            .endpoints
            .ws
            .as_str()
            .into_client_request()
            .context("--url: not a WebSocket URL")?;
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, self.authorization.clone());
        let connect =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request));
        let mut socket = tokio::select! {
            () = signals.recv() => return Ok(Flow::Stop),
            connected = connect => match connected {
                Err(_) => return Ok(Flow::Lost("connecting timed out".into())),
                Ok(Ok((socket, _))) => socket,
                Ok(Err(error)) => return refused(error),
            },
        };
        let mut subscribe =
            serde_json::json!({"type": "subscribe", "topic": self.topic.to_string()});
        if let (Topic::Thread(_), Some(after_seq)) = (self.topic, self.cursor) {
            subscribe["after_seq"] = after_seq.into();
        }
        if let Err(error) = socket.send(Message::text(subscribe.to_string())).await {
            return Ok(Flow::Lost(format!("subscribing failed: {error}")));
        }
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let flow = tokio::select! {
                () = signals.recv() => Flow::Stop,
                _ = keepalive.tick() => {
                    if last_heard.elapsed() > DEAD_AFTER {
                        Flow::Lost(format!("nothing heard from the server for {} s", DEAD_AFTER.as_secs()))
                    } else if let Err(error) = socket.send(Message::Ping(Default::default())).await {
                        Flow::Lost(format!("connection lost: {error}"))
                    } else {
                        Flow::Go
                    }
                }
                received = socket.next() => {
                    last_heard = tokio::time::Instant::now();
                    match received {
                        None => Flow::Lost("the connection dropped".into()),
                        Some(Err(error)) => Flow::Lost(format!("connection lost: {error}")),
                        Some(Ok(Message::Text(text))) => {
                            self.frame(text.as_str(), signals, backoff).await?
                        }
                        Some(Ok(Message::Close(frame))) => Flow::Lost(match frame {
                            Some(frame) => format!(
                                "the server closed the connection ({} {})",
                                u16::from(frame.code),
                                frame.reason
                            ),
                            None => "the server closed the connection".into(),
                        }),
                        Some(Ok(_)) => Flow::Go,
                    }
                }
            };
            match flow {
                Flow::Go => {}
                Flow::Stop => {
                    close(&mut socket).await;
                    return Ok(Flow::Stop);
                }
                Flow::Lost(why) => return Ok(Flow::Lost(why)),
            }
        }
    }

    /// Prints one server frame, and acts on what it says.
    async fn frame(
        &mut self,
        text: &str,
        signals: &mut Signals,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Flow> {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            self.print(text)?;
            return Ok(Flow::Go);
        };
        match frame["type"].as_str().unwrap_or_default() {
            "message" => {
                let seq = frame["seq"].as_i64();
                if let (Some(seq), Some(cursor)) = (seq, self.cursor)
                    && seq <= cursor
                {
                    return Ok(Flow::Go);
                }
                self.print(text)?;
                self.cursor = seq.or(self.cursor);
            }
            "subscribed" => {
                self.print(text)?;
                backoff.reset();
                status(format_args!("subscribed to {}", self.topic));
                if let (Topic::Thread(thread), Some(last_seq)) =
                    (self.topic, frame["last_seq"].as_i64())
                {
                    let cursor = *self.cursor.get_or_insert(last_seq);
                    if frame["recovered"] == false && cursor < last_seq {
                        return self.page(thread, last_seq, signals).await;
                    }
                }
            }
            "error" => {
                self.print(text)?;
                let code = frame["code"].as_str().unwrap_or_default();
                let message = frame["message"].as_str().unwrap_or_default();
                // Errors about the subscription end it; others (a dropped
                // frame, say) are only reported.
                if frame["topic"].as_str() == Some(&self.topic.to_string()) {
                    if code == "internal" {
                        return Ok(Flow::Lost(format!("subscribing failed: {message}")));
                    }
                    bail!(
                        "the server refused to subscribe to {}: {code}: {message}",
                        self.topic
                    );
                }
                status(format_args!("the server says {code}: {message}"));
            }
            _ => self.print(text)?,
        }
        Ok(Flow::Go)
    }

    /// Prints the thread's messages after the cursor up to `last_seq` from
    /// REST, as the socket would have sent them.
    async fn page(
        &mut self,
        thread: ThreadId,
        last_seq: i64,
        signals: &mut Signals,
    ) -> anyhow::Result<Flow> {
        status(format_args!(
            "too many messages to replay: reading them over HTTP up to seq {last_seq}"
        ));
        loop {
            let after_seq = self.cursor.unwrap_or(0);
            if after_seq >= last_seq {
                return Ok(Flow::Go);
            }
            let mut url = self.endpoints.messages(thread)?;
            url.query_pairs_mut()
                .append_pair("after_seq", &after_seq.to_string())
                .append_pair("limit", &PAGE.to_string());
            let request = self
                .http
                .get(url)
                .header(header::AUTHORIZATION, self.authorization.clone())
                .send();
            let response = tokio::select! {
                () = signals.recv() => return Ok(Flow::Stop),
                response = request => response,
            };
            let response = match response {
                Ok(response) => response,
                Err(error) => return Ok(Flow::Lost(format!("reading messages failed: {error}"))),
            };
            let status_code = response.status();
            let body = match response.bytes().await {
                Ok(body) => body,
                Err(error) => return Ok(Flow::Lost(format!("reading messages failed: {error}"))),
            };
            if !status_code.is_success() {
                let why = format!("reading messages: {}", describe(status_code, &body));
                if is_permanent(status_code) {
                    bail!(why);
                }
                return Ok(Flow::Lost(why));
            }
            let page: MessagePage =
                serde_json::from_slice(&body).context("reading messages: an unexpected answer")?;
            for message in &page.messages {
                let head: MessageHead = serde_json::from_str(message.get())
                    .context("reading messages: an unexpected message")?;
                if head.seq <= after_seq {
                    continue;
                }
                let frame = serde_json::to_string(&MessageFrame {
                    kind: "message",
                    thread_id: head.thread_id,
                    seq: head.seq,
                    message,
                })?;
                self.print(&frame)?;
                self.cursor = Some(head.seq);
            }
            if !page.has_more || page.next_after_seq <= after_seq {
                return Ok(Flow::Go);
            }
        }
    }

    /// One line on stdout, flushed at once so that pipes see it.
    fn print(&mut self, line: &str) -> anyhow::Result<()> {
        let mut out = self.stdout.lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("writing to stdout")
    }
}

/// `GET /v1/threads/{id}/messages`.
#[derive(Deserialize)]
struct MessagePage {
    messages: Vec<Box<RawValue>>,
    has_more: bool,
    next_after_seq: i64,
}

#[derive(Deserialize)]
struct MessageHead {
    thread_id: ThreadId,
    seq: i64,
}

/// A `message` frame as the hub writes it, the message kept byte for byte.
#[derive(Serialize)]
struct MessageFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    thread_id: ThreadId,
    seq: i64,
    message: &'a RawValue,
}

/// Why the socket could not be opened: retry, or give up.
fn refused(error: tungstenite::Error) -> anyhow::Result<Flow> {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let why = describe(status, response.body().as_deref().unwrap_or_default());
            if is_permanent(status) {
                bail!("the server refused the connection: {why}");
            }
            Ok(Flow::Lost(format!(
                "the server refused the connection: {why}"
            )))
        }
        tungstenite::Error::Url(error) => bail!("--url: {error}"),
        error => Ok(Flow::Lost(format!("connecting failed: {error}"))),
    }
}

/// Client errors that the same request will meet again (a bad token, a
/// forbidden origin, a wrong URL), as opposed to a busy or restarting server.
fn is_permanent(status: StatusCode) -> bool {
    status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
}

/// `401 Unauthorized: <the server's message>`.
fn describe(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(body).ok().and_then(|body| {
        let error = &body["error"];
        let code = error["code"].as_str()?;
        Some(match error["message"].as_str() {
            Some(message) => format!("{code}: {message}"),
            None => code.to_owned(),
        })
    });
    match message {
        Some(message) => format!("{status} ({message})"),
        None => status.to_string(),
    }
}

/// Says goodbye: a close frame, and a short wait for the server's answer.
async fn close(socket: &mut Socket) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    if socket.close(Some(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// Where the server is: its WebSocket and its REST base.
struct Endpoints {
    /// `ws(s)://HOST/…/v1/ws`
    ws: Url,
    /// `http(s)://HOST/…/`, ending in a slash.
    base: Url,
}

impl Endpoints {
    fn new(url: &str) -> anyhow::Result<Self> {
        let mut base = Url::parse(url).with_context(|| format!("--url: {url:?} is not a URL"))?;
        let (http, ws) = match base.scheme() {
            "http" | "ws" => ("http", "ws"),
            "https" | "wss" => ("https", "wss"),
            other => bail!("--url: expected an http:// or https:// URL, not {other}://"),
        };
        if base.cannot_be_a_base() || base.host().is_none() {
            bail!("--url: {url:?} has no host");
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        // Both are special schemes, between which the scheme may change.
        let _ = base.set_scheme(http);
        let mut ws_url = base.join("v1/ws")?;
        let _ = ws_url.set_scheme(ws);
        Ok(Self { ws: ws_url, base })
    }

    fn messages(&self, thread: ThreadId) -> anyhow::Result<Url> {
        Ok(self.base.join(&format!("v1/threads/{thread}/messages"))?)
    }
}

/// Reconnection delays: 100 ms doubling to 5 s, each drawn between half and
/// all of that so that many tails do not come back in step.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Self { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// Ctrl-C and SIGTERM, listened for from the start so that neither kills
/// the process mid-line.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Self {})
    }

    /// Resolves on the next signal; cancel-safe.
    #[cfg(unix)]
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        status(format_args!("stopping"));
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
        status(format_args!("stopping"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_the_base_path_and_map_the_scheme() {
        let plain = Endpoints::new("http://127.0.0.1:8080").unwrap();
        assert_eq!(plain.ws.as_str(), "ws://127.0.0.1:8080/v1/ws");
        let prefixed = Endpoints::new("https://chat.example.com/tandem?x=1").unwrap();
        assert_eq!(prefixed.ws.as_str(), "wss://chat.example.com/tandem/v1/ws");
        let thread = ThreadId::new();
        assert_eq!(
            prefixed.messages(thread).unwrap().as_str(),
            format!("https://chat.example.com/tandem/v1/threads/{thread}/messages")
        );
        assert!(Endpoints::new("ftp://example.com").is_err());
        assert!(Endpoints::new("127.0.0.1:8080").is_err());
    }

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter() {
        let mut backoff = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[9] >= Duration::from_millis(2500) && delays[9] <= Backoff::MAX);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
