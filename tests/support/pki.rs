//! Certificates for the TLS tests, made at test time with rcgen (so none expires in the
//! repository): a CA, server certificates signed by it (good, expired, for another name), a
//! client certificate for mutual TLS, and a second CA nobody's certificate comes from.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A directory of PEM files, removed on drop.
pub struct Pki {
    pub dir: PathBuf,
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params, KeyPair::generate().unwrap())
}

impl Pki {
    /// Makes every file in a fresh directory.
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "dragonlock-pki-{}-{}",
            std::process::id(),
            dragonlock::local::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };

        let (ca_params, ca_key) = ca("dragonlock test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        pki.write("ca.crt", &ca_cert.pem());
        let issuer = Issuer::new(ca_params, ca_key);

        let (other_params, other_key) = ca("another CA");
        pki.write(
            "other-ca.crt",
            &other_params.self_signed(&other_key).unwrap().pem(),
        );

        let server = |names: &[&str], ips: bool| {
            let mut p =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            if ips {
                p.subject_alt_names
                    .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            }
            p.distinguished_name.push(DnType::CommonName, names[0]);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p
        };
        let good = server(&["localhost"], true);
        pki.issue("server", good, &issuer);
        let mut expired = server(&["localhost"], true);
        expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
        expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
        pki.issue("expired", expired, &issuer);
        pki.issue("wrong-name", server(&["other.example"], false), &issuer);

        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "dragonlock test client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        pki.issue("client", client, &issuer);
        pki
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.dir.join(name), pem).unwrap();
    }

    fn issue(&self, name: &str, params: CertificateParams, issuer: &Issuer<'_, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        self.write(&format!("{name}.crt"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA every certificate here (but `other-ca.crt`) is signed by.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }

    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.crt")
    }

    /// `server`, `expired`, `wrong-name` or `client`.
    pub fn pair(&self, name: &str) -> CertFiles {
        CertFiles {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
