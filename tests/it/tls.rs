//! TLS with a private CA made for the test (the `openssl` command): a server certificate for
//! `localhost` and 127.0.0.1 signed by it, an HTTPS receiver for webhooks, and a throwaway
//! PostgreSQL with `ssl=on` that accepts TLS connections only.

use crate::helpers::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA and a server certificate it signed, as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("the openssl command is needed for the TLS tests: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh CA ("sessiond test CA") and a server certificate for `localhost` / 127.0.0.1.
pub fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sessiond test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(d, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(d, &csr);
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    Pki {
        ca: d.join("ca.pem"),
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        dir,
    }
}

/// What an HTTPS receiver saw: complete requests (head and body as text).
#[derive(Default)]
pub struct Seen {
    pub requests: std::sync::Mutex<Vec<String>>,
    pub handshakes_failed: std::sync::atomic::AtomicUsize,
}

/// Serves HTTPS on 127.0.0.1 with the PKI's server certificate: each request is recorded and
/// answered 200. Returns the port.
pub async fn https_receiver(pki: &Pki) -> (u16, Arc<Seen>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    seen.handshakes_failed
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return;
                };
                if let Some(request) = read_request(&mut tls).await {
                    seen.requests.lock().unwrap().push(request);
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (port, seen)
}

/// One HTTP/1.1 request with a content-length body.
async fn read_request(io: &mut (impl AsyncReadExt + Unpin)) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL that accepts TLS connections only (`hostssl` in pg_hba.conf), with the PKI's
/// server certificate; stopped and removed on drop.
struct TlsPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsPostgres {
    /// `None` (after a notice) where PostgreSQL is not installed; never in CI.
    fn start(pki: &Pki) -> Option<TlsPostgres> {
        if !Path::new(PG_BIN).join("initdb").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have PostgreSQL in {PG_BIN}"
            );
            eprintln!("skipping the PostgreSQL TLS test: no {PG_BIN}/initdb");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("data");
        let run = |args: &[&str]| {
            // initdb and postgres refuse to run as root: as the postgres user when we are root.
            let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
            let mut cmd = if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]);
                c
            } else {
                Command::new(args[0])
            };
            if root {
                cmd.arg(args[0]);
            }
            let out = cmd.args(&args[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let chown = |p: &Path| {
            let _ = Command::new("chown")
                .args(["-R", "postgres:", p.to_str().unwrap()])
                .output();
        };
        chown(d);
        let initdb = format!("{PG_BIN}/initdb");
        run(&[
            &initdb,
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]);
        std::fs::copy(&pki.cert, data.join("server.crt")).unwrap();
        std::fs::copy(&pki.key, data.join("server.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        // TLS or nothing: a plain connection is rejected by the server itself.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 0.0.0.0/0 reject\n",
        )
        .unwrap();
        chown(d);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off",
            d.display()
        );
        let log = d.join("log");
        run(&[
            &pg_ctl,
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-o",
            &options,
            "start",
        ]);
        Some(TlsPostgres { dir, port })
    }

    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let pg_ctl = format!("{PG_BIN}/pg_ctl");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n");
        let mut cmd = if root.unwrap_or(false) {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", &pg_ctl]);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let _ = cmd
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}

#[tokio::test]
async fn the_service_talks_to_postgresql_over_verified_tls_as_the_url_says() {
    let pki = make_pki();
    let Some(pg) = TlsPostgres::start(&pki) else {
        return;
    };
    let ca = pki.ca.to_str().unwrap();
    let verified = pg.url(&format!("sslmode=verify-full&sslrootcert={ca}"));

    // The whole service on it: register and sign in, over TLS that checked the certificate.
    let url = verified.clone();
    let app = spawn_app_with(move |c| {
        c.database_url = Some(sessiond::config::DatabaseUrl::parse(&url).unwrap());
    })
    .await;
    app.register("alice").await;
    app.login("alice").await;
    // What the server says about the service's own connections: every one is TLS.
    let (tls, plain): (i64, i64) = {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&verified).await.unwrap();
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
        )
        .fetch_one(&mut c)
        .await
        .unwrap()
    };
    assert!(tls >= 1, "the service's connections use TLS");
    assert_eq!(plain, 0);

    // Verification is on: without the private CA the certificate is not trusted, and the
    // service does not start.
    let untrusted = pg.url("sslmode=verify-full");
    let mut config = sessiond::config::Config {
        database_url: sessiond::config::DatabaseUrl::parse(&untrusted),
        data_dir: pki.dir.path().join("data-untrusted"),
        ..Default::default()
    };
    config.listen = "127.0.0.1:0".parse().unwrap();
    let started = sessiond::App::build(config).await;
    let e = started
        .err()
        .expect("an untrusted certificate stops the start");
    assert!(
        e.to_string().to_lowercase().contains("certificate"),
        "the error names the certificate: {e}"
    );

    // And a plain connection is what the server refuses (so the success above was TLS).
    let plain_url = pg.url("sslmode=disable");
    use sqlx::Connection;
    assert!(sqlx::PgConnection::connect(&plain_url).await.is_err());
}
