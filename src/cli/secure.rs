//! The stream feed's security options: tokens and TLS for `serve` and its clients, the
//! loopback rule, and `headstart certs`.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use headstart::net::auth::{Token, Tokens};
use headstart::net::{Address, ClientOptions, ServerConfig, tls};

/// `serve`'s options: who may connect, and over what.
#[derive(Args)]
pub struct ServeSecurity {
    /// Tokens clients must present, one `ROLE TOKEN` line each (`push`: batches only;
    /// `admin`: also begin-task, solve, sync, stats). The file must be private (chmod 600).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (`headstart certs` makes one); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (chmod 600).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Listen on a TCP address that is not loopback without --token-file: anyone who reaches
    /// it may push, solve and checkpoint.
    #[arg(long)]
    insecure: bool,
}

impl ServeSecurity {
    /// Loads the tokens and the certificate into `config`, after checking the loopback rule.
    pub fn apply(&self, address: &Address, config: &mut ServerConfig) -> anyhow::Result<()> {
        if let Some(path) = &self.token_file {
            config.tokens = Some(Tokens::load(path).context("--token-file")?);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(tls::server_config(cert, key).context("--tls-cert/--tls-key")?);
        }
        let Address::Tcp(host_port) = address else {
            return Ok(()); // a Unix socket: file permissions decide who connects
        };
        let addresses: Vec<_> = host_port
            .to_socket_addrs()
            .with_context(|| format!("--listen {host_port}: cannot resolve it"))?
            .collect();
        let exposed = addresses.iter().find(|a| !a.ip().is_loopback());
        let Some(exposed) = exposed else {
            return Ok(());
        };
        if config.tokens.is_none() && !self.insecure {
            bail!(
                "refusing to listen on {host_port} ({}, not a loopback address) without --token-file: anyone who can reach it could push batches, solve heads and force checkpoints. Give --token-file F (and --tls-cert/--tls-key on an untrusted network), listen on 127.0.0.1 or unix:PATH, or pass --insecure to accept the risk",
                exposed.ip()
            );
        }
        if config.tls.is_none() {
            eprintln!(
                "warning: {host_port} is not a loopback address and the server has no --tls-cert: tokens and features travel unencrypted"
            );
        }
        Ok(())
    }
}

/// A client's options: its token and the CA it trusts.
#[derive(Args)]
pub struct ClientSecurity {
    /// A private file whose first token is sent when the server asks for one (`ROLE TOKEN` or
    /// `TOKEN` lines); without it, the HEADSTART_TOKEN environment variable.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Connect with TLS, trusting the CA certificates in this PEM file (`headstart certs`
    /// writes ca.pem).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

impl ClientSecurity {
    /// The client options with `timeout`.
    pub fn options(&self, timeout: Option<Duration>) -> anyhow::Result<ClientOptions> {
        let token = Token::for_client(self.token_file.as_deref()).context(if self.token_file.is_some() {
            "--token-file"
        } else {
            "HEADSTART_TOKEN"
        })?;
        let options = ClientOptions {
            timeout,
            token,
            tls: None,
            reconnect: None,
        };
        Ok(match &self.tls_ca {
            Some(ca) => options.with_tls_ca(ca).context("--tls-ca")?,
            None => options,
        })
    }
}

/// `headstart certs`: a private CA and a server certificate signed by it.
#[derive(Args)]
pub struct CertsArgs {
    /// Directory for ca.pem (give it to clients: --tls-ca), server.pem and server.key (give
    /// them to `serve --tls-cert/--tls-key`); created if missing.
    #[arg(long)]
    out: PathBuf,
    /// A DNS name or IP address clients use to reach the server (repeatable; default
    /// localhost, 127.0.0.1 and ::1).
    #[arg(long = "name")]
    names: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 825)]
    days: u32,
}

pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    let names = if args.names.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()]
    } else {
        args.names.clone()
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let paths = ["ca.pem", "server.pem", "server.key"].map(|f| args.out.join(f));
    for path in &paths {
        super::check_output("--out", path)?;
    }
    let now = time_now();
    let until = now + Duration::from_secs(u64::from(args.days) * 86_400);
    let validity = |p: &mut CertificateParams| {
        p.not_before = now.into();
        p.not_after = until.into();
    };

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A name of its own, so that a client trusting another `certs` run's CA is told the
    // issuer is unknown.
    let serial: u64 = rand::random();
    ca.distinguished_name
        .push(DnType::CommonName, format!("headstart private CA {serial:016x}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().context("generating the server key")?;
    let mut server = CertificateParams::new(names.clone()).context("--name")?;
    server
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut server);
    let server_cert = server.signed_by(&key, &issuer)?;

    write(&paths[0], &ca_cert.pem(), 0o644)?;
    write(&paths[1], &server_cert.pem(), 0o644)?;
    write(&paths[2], &key.serialize_pem(), 0o600)?;
    outln!(
        "wrote {} (clients: --tls-ca), {} and {} (serve: --tls-cert, --tls-key) for {}, valid {} days; the CA's key was not kept",
        paths[0].display(),
        paths[1].display(),
        paths[2].display(),
        names.join(", "),
        args.days
    )?;
    Ok(())
}

fn time_now() -> std::time::SystemTime {
    // A minute back, so that a client whose clock is a little behind accepts it.
    std::time::SystemTime::now() - Duration::from_secs(60)
}

/// Writes `text` with `mode`, the mode set before any byte is written.
fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
