//! Certificates and secrets the tests generate: a CA, a server certificate
//! it signs for the loopback addresses, and a cluster secret file.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Writes a secret file only its owner may read and write (0600): services
/// refuse a secret file group or others can access.
pub fn write_secret_file(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create secret file");
    file.write_all(text.as_bytes()).expect("write secret file");
}

/// Files of a test PKI and secret, under one directory.
#[derive(Debug)]
pub struct TestPki {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub secret_file: PathBuf,
}

impl TestPki {
    /// Generates a CA, a certificate for `127.0.0.1` and `localhost` signed
    /// by it, and a random 32-byte secret (hex), all written under `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "terrace test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("generate server key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "terrace test server");
        let cert = params
            .signed_by(&server_key, &issuer)
            .expect("sign the server certificate");
        let pki = TestPki {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            secret_file: dir.join("secret"),
        };
        std::fs::write(&pki.ca_file, ca_cert.pem()).expect("write CA file");
        std::fs::write(&pki.cert_file, cert.pem()).expect("write certificate file");
        std::fs::write(&pki.key_file, server_key.serialize_pem()).expect("write key file");
        let mut random = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("open /dev/urandom"),
            &mut random,
        )
        .expect("read /dev/urandom");
        let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
        write_secret_file(&pki.secret_file, &format!("{secret}\n"));
        pki
    }

    /// A `[security]` table for a master's or worker's config: the secret,
    /// and with `tls` the certificate to serve and the CA to trust.
    pub fn security_toml(&self, tls: bool) -> String {
        let mut toml = format!(
            "[security]\nsecret_file = \"{}\"\n",
            self.secret_file.display()
        );
        if tls {
            toml.push_str(&format!(
                "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n",
                self.cert_file.display(),
                self.key_file.display(),
                self.ca_file.display()
            ));
        }
        toml
    }
}
