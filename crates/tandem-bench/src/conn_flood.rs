//! `conn-flood`: sockets that hold a server without ever finishing a
//! request, and what the legitimate clients see meanwhile.
//!
//! The real server runs in this process with its default configuration
//! (header timeout 5 s, idle timeout 60 s, body timeout 30 s, 64 sockets per
//! address, loopback not exempt), except for the admin rate limit, raised
//! out of reach. Against it, from `--sources` (20) loopback addresses
//! (127.0.10.1, 127.0.10.2, …, so the per-address cap is not what ends
//! them), the attack opens at once:
//!
//! - `--slowloris` (500) sockets that send a request line and one header,
//!   then another header line every `--trickle-ms` (1,000), never the blank
//!   line that ends the head;
//! - `--idle` (500) sockets that send nothing;
//! - `--slow-body` (0) sockets that send a whole head announcing a 64 KiB
//!   JSON body to a route anyone may call (`POST /v1/customers/sessions`),
//!   then a byte every `--trickle-ms`.
//!
//! Each attack socket reads for the end of its stream, and records when the
//! server closed it (or that it was still open at the end). Meanwhile a
//! legitimate client sends `GET /v1/threads` with an admin token
//! `--rate` (20) times a second, each on a **new** connection (a new
//! visitor: accept included), from 127.0.0.1, for `--duration-secs` (20),
//! and records each request's latency (connect to whole answer; 10 s at
//! most, then an error).
//!
//! The run fails (exit code 1) if an attack socket is still open at the end
//! or a legitimate request fails. Bounded: the attack and the clients stop
//! after `--duration-secs`; a watchdog ends the process a minute later if
//! anything hangs. Loopback only.
//!
//! ```text
//! cargo build --release -p tandem-bench
//! target/release/conn-flood
//! target/release/conn-flood --slow-body 200 --duration-secs 40
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use hdrhistogram::Histogram;
use tandem_bench::procfs::{CpuSample, CpuUse};
use tandem_bench::server::{InProcessServer, StoreArgs};
use tandem_server::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(
    name = "conn-flood",
    about = "Slow and silent sockets against the server, and the latency legitimate clients see meanwhile"
)]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Sockets that trickle a request head and never end it.
    #[arg(long, default_value_t = 500)]
    slowloris: usize,
    /// Sockets that send nothing.
    #[arg(long, default_value_t = 500)]
    idle: usize,
    /// Sockets that send a head, then trickle a body.
    #[arg(long, default_value_t = 0)]
    slow_body: usize,
    /// Between two pieces the slow sockets send.
    #[arg(long, default_value_t = 1000)]
    trickle_ms: u64,
    /// Loopback addresses the attack comes from (127.0.10.1, …).
    #[arg(long, default_value_t = 20)]
    sources: usize,
    /// Legitimate requests a second, each on a new connection.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// How long the attack and the legitimate clients run.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tandem_bench::exit_after("conn-flood", Duration::from_secs(args.duration_secs + 60));
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("conn-flood: FAILED (see the report above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("conn-flood: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Slowloris,
    Idle,
    SlowBody,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Slowloris => "slowloris",
            Self::Idle => "idle",
            Self::SlowBody => "slow body",
        }
    }
}

/// What became of one attack socket.
struct Fate {
    kind: Kind,
    /// From its connect to the end of its stream; none if still open.
    closed_after: Option<Duration>,
    /// The status line the server sent before closing, if any.
    answered: Option<String>,
}

async fn run(args: Args) -> Result<bool> {
    ensure!(
        args.sources > 0 && args.sources < 250,
        "--sources is 1 to 249"
    );
    ensure!(args.rate > 0, "--rate must be at least 1");
    let attack = args.slowloris + args.idle + args.slow_body;
    // This process holds both ends of every socket.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let needed = (2 * attack + 1_000) as u64;
    ensure!(
        nofile >= needed,
        "the open-file limit is {nofile}; this run needs about {needed}"
    );
    let server = InProcessServer::start(
        &args.store,
        "conn-flood",
        |config| {
            // The defaults, loopback included: the attack's addresses are
            // held to the per-address cap like anyone's.
            config.connections = tandem_server::config::ConnectionsConfig::default();
            config.reply.enabled = false;
        },
        |store, config| async move { Ok(AppState::new(store, config)) },
    )
    .await?;
    let outcome = flood(&args, &server).await;
    let stopped = server.stop().await;
    let report = outcome?;
    stopped?;
    report.print(&args, attack);
    Ok(report.passed(attack))
}

struct Report {
    label: String,
    fates: Vec<Fate>,
    latency: Histogram<u64>,
    legit_ok: u64,
    legit_errors: Vec<String>,
    connect_secs: f64,
    cpu: Option<CpuUse>,
}

async fn flood(args: &Args, server: &InProcessServer) -> Result<Report> {
    let address: SocketAddr = server
        .base_url
        .trim_start_matches("http://")
        .parse()
        .context("the server's address")?;
    let duration = Duration::from_secs(args.duration_secs);
    let trickle = Duration::from_millis(args.trickle_ms);
    let cpu_from = CpuSample::take();
    let started = Instant::now();
    let end = tokio::time::Instant::now() + duration;

    // The attack: every socket connected as fast as the machine allows.
    let kinds = std::iter::repeat_n(Kind::Slowloris, args.slowloris)
        .chain(std::iter::repeat_n(Kind::Idle, args.idle))
        .chain(std::iter::repeat_n(Kind::SlowBody, args.slow_body));
    let mut attackers = Vec::new();
    for (i, kind) in kinds.enumerate() {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 10, 1 + (i % args.sources) as u8));
        let stream = connect_from(source, address).await?;
        attackers.push(tokio::spawn(attack(stream, kind, trickle, end)));
    }
    let connect_secs = started.elapsed().as_secs_f64();

    // The legitimate clients, meanwhile: a new connection per request.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client")?;
    let url = format!("{}/v1/threads?limit=1", server.base_url);
    let token = Arc::new(server.token.clone());
    let in_flight = Arc::new(Semaphore::new(200));
    let mut requests = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = client.get(&url).bearer_auth(token.as_str()).send().await;
            let result = match answer {
                Ok(response) if response.status().is_success() => response
                    .bytes()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Ok(response) => Err(format!("status {}", response.status())),
                Err(e) => Err(e.to_string()),
            };
            drop(permit);
            result.map(|()| sent.elapsed())
        }));
    }
    let mut latency = Histogram::<u64>::new(3).context("histogram")?;
    let (mut legit_ok, mut legit_errors) = (0, Vec::new());
    for request in requests {
        match request.await? {
            Ok(took) => {
                legit_ok += 1;
                latency.record(took.as_micros().max(1) as u64)?;
            }
            Err(error) => legit_errors.push(error),
        }
    }
    let mut fates = Vec::with_capacity(attackers.len());
    for attacker in attackers {
        fates.push(attacker.await?);
    }
    let cpu = cpu_from
        .zip(CpuSample::take())
        .map(|(from, to)| to.since(&from));
    Ok(Report {
        label: server.label.clone(),
        fates,
        latency,
        legit_ok,
        legit_errors,
        connect_secs,
        cpu,
    })
}

async fn connect_from(source: IpAddr, server: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket
        .connect(server)
        .await
        .with_context(|| format!("connecting from {source}"))
}

/// One attack socket until the server closes it or `end`.
async fn attack(
    mut stream: TcpStream,
    kind: Kind,
    trickle: Duration,
    end: tokio::time::Instant,
) -> Fate {
    let opened = Instant::now();
    let first: &[u8] = match kind {
        Kind::Slowloris => b"GET /v1/threads HTTP/1.1\r\nHost: tandem\r\n",
        Kind::Idle => b"",
        Kind::SlowBody => {
            b"POST /v1/customers/sessions HTTP/1.1\r\nHost: tandem\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{"
        }
    };
    let mut received = Vec::new();
    let mut writing = stream.write_all(first).await.is_ok();
    let mut buf = [0u8; 1024];
    let mut next = tokio::time::Instant::now() + trickle;
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep_until(next), if kind != Kind::Idle && writing => {
                let piece: &[u8] = match kind {
                    Kind::SlowBody => b" ",
                    _ => b"X-Trickle: a\r\n",
                };
                // A write may fail once the server has closed: the read
                // reports the end.
                writing = stream.write_all(piece).await.is_ok();
                next += trickle;
            }
            () = tokio::time::sleep_until(end) => {
                return Fate { kind, closed_after: None, answered: status_line(&received) };
            }
        }
    }
    Fate {
        kind,
        closed_after: Some(opened.elapsed()),
        answered: status_line(&received),
    }
}

fn status_line(received: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(received);
    text.lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

impl Report {
    fn passed(&self, attack: usize) -> bool {
        self.legit_errors.is_empty()
            && self.fates.len() == attack
            && self.fates.iter().all(|f| f.closed_after.is_some())
    }

    fn print(&self, args: &Args, attack: usize) {
        println!("conn-flood");
        println!("  backend            {}", self.label);
        println!(
            "  attack             {attack} sockets from {} addresses, connected in {:.2} s; trickle every {} ms",
            args.sources, self.connect_secs, args.trickle_ms
        );
        for kind in [Kind::Slowloris, Kind::Idle, Kind::SlowBody] {
            let fates: Vec<&Fate> = self.fates.iter().filter(|f| f.kind == kind).collect();
            if fates.is_empty() {
                continue;
            }
            let mut closed: Vec<f64> = fates
                .iter()
                .filter_map(|f| f.closed_after.map(|d| d.as_secs_f64()))
                .collect();
            closed.sort_by(f64::total_cmp);
            let at = |q: f64| {
                closed
                    .get(((closed.len() as f64 * q).ceil() as usize).saturating_sub(1))
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            let mut answers: Vec<String> =
                fates.iter().filter_map(|f| f.answered.clone()).collect();
            answers.sort();
            answers.dedup();
            println!(
                "  {:<18} {} closed by the server of {}; after p50 {:.2} s, max {:.2} s{}",
                kind.name(),
                closed.len(),
                fates.len(),
                at(0.5),
                at(1.0),
                if answers.is_empty() {
                    String::new()
                } else {
                    format!("; answered {answers:?}")
                }
            );
        }
        println!(
            "  legitimate         {} answered, {} failed, {} a second on new connections for {} s",
            self.legit_ok,
            self.legit_errors.len(),
            args.rate,
            args.duration_secs
        );
        if !self.latency.is_empty() {
            println!(
                "    latency (ms)     p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
                ms(&self.latency, 0.5),
                ms(&self.latency, 0.9),
                ms(&self.latency, 0.99),
                ms(&self.latency, 1.0)
            );
        }
        for error in self
            .legit_errors
            .iter()
            .take(tandem_bench::MAX_ERROR_SAMPLES)
        {
            println!("    error            {error}");
        }
        if let Some(cpu) = &self.cpu {
            println!(
                "    cpu              this process {:.2} cores; machine ({} cores) {:.0}% busy, {:.0}% steal",
                cpu.process_cores,
                cpu.machine_cores,
                cpu.busy * 100.0,
                cpu.steal * 100.0,
            );
        }
    }
}
