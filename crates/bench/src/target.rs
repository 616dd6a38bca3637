//! Where load goes: a loopback address and a request path, parsed from a URL template.
//!
//! Benchmarks send traffic to the local machine only, so a URL whose host is not a loopback
//! address is refused here, before any connection is opened.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result, bail, ensure};
use hyper::Uri;
use hyper::header::HeaderValue;

/// The placeholder in a URL template that is replaced by the connection's index, so that each
/// client can address its own machine (`/machines/m{i}/state?state=s`).
pub const CONNECTION_INDEX_PLACEHOLDER: &str = "{i}";

/// The port an `http://` URL means when it names none.
const HTTP_PORT_DEFAULT: u16 = 80;

/// A URL whose path may contain [`CONNECTION_INDEX_PLACEHOLDER`], parsed and checked once.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    text: String,
    addr: SocketAddr,
    host_header: HeaderValue,
    path_template: String,
}

/// One connection's target: the address to connect to, the `Host` header and the request path.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: HeaderValue,
    pub path_and_query: Uri,
}

impl UrlTemplate {
    /// Parses `http://HOST:PORT/PATH?QUERY`, where HOST must be a loopback address or `localhost`.
    pub fn parse(text: &str) -> Result<Self> {
        let rest = text
            .strip_prefix("http://")
            .with_context(|| format!("the URL {text:?} does not start with http://"))?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let path_template = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        let addr = parse_loopback_authority(authority)
            .with_context(|| format!("the URL {text:?} names no usable loopback address"))?;
        let host_header = HeaderValue::from_str(&addr.to_string())
            .context("a socket address is always a valid Host header")?;
        let template = Self {
            text: text.to_owned(),
            addr,
            host_header,
            path_template,
        };
        // Substituting an index must give a valid request path; check it now rather than in the
        // middle of a measurement.
        template
            .for_connection(0)
            .with_context(|| format!("the URL {text:?} has an invalid path"))?;
        Ok(template)
    }

    /// The target of connection number `index`: the path with `{i}` replaced by the index.
    pub fn for_connection(&self, index: usize) -> Result<Target> {
        let path = self
            .path_template
            .replace(CONNECTION_INDEX_PLACEHOLDER, &index.to_string());
        let path_and_query = Uri::try_from(path.as_str())
            .with_context(|| format!("{path:?} is not a valid request path"))?;
        ensure!(
            path_and_query.scheme().is_none() && path_and_query.authority().is_none(),
            "{path:?} is not a path"
        );
        Ok(Target {
            addr: self.addr,
            host_header: self.host_header.clone(),
            path_and_query,
        })
    }

    /// The loopback address every connection goes to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The template as it was given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Parses `HOST[:PORT]` and refuses any host that is not on this machine's loopback interface.
fn parse_loopback_authority(authority: &str) -> Result<SocketAddr> {
    ensure!(!authority.is_empty(), "the host is missing");
    ensure!(
        !authority.contains('@'),
        "user information in the URL is not supported"
    );
    let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .context("an IPv6 address is missing its closing bracket")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port_text {
        Some(text) => text
            .parse::<u16>()
            .with_context(|| format!("{text:?} is not a port number"))?,
        None => HTTP_PORT_DEFAULT,
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>()
            .with_context(|| format!("{host:?} is not an IP address or localhost"))?
    };
    if !ip.is_loopback() {
        bail!("{ip} is not a loopback address; benchmarks only send traffic to this machine");
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_the_connection_index_in_the_path() {
        let template =
            UrlTemplate::parse("http://127.0.0.1:7400/machines/m{i}/state?state=s").unwrap();
        let target = template.for_connection(17).unwrap();
        assert_eq!(target.addr, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(target.host_header, "127.0.0.1:7400");
        assert_eq!(target.path_and_query, "/machines/m17/state?state=s");
    }

    #[test]
    fn accepts_localhost_ipv6_and_a_missing_path() {
        let template = UrlTemplate::parse("http://localhost:8080").unwrap();
        assert_eq!(template.addr(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(template.for_connection(0).unwrap().path_and_query, "/");
        let template = UrlTemplate::parse("http://[::1]:9000?state=x").unwrap();
        assert_eq!(template.addr(), "[::1]:9000".parse().unwrap());
        assert_eq!(
            template.for_connection(0).unwrap().path_and_query,
            "/?state=x"
        );
    }

    #[test]
    fn refuses_hosts_off_this_machine_and_other_schemes() {
        for url in [
            "http://10.0.0.1:80/",
            "http://example.com/",
            "https://127.0.0.1/",
            "127.0.0.1:80/",
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:80/a b",
        ] {
            assert!(UrlTemplate::parse(url).is_err(), "{url} should be refused");
        }
    }
}
