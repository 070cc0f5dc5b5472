//! Test certificates (rcgen): a CA, a server certificate for
//! 127.0.0.1/localhost, a client certificate, and a client certificate from
//! an unrelated CA, as PEM files in a temporary directory.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// The files: `ca.pem`; `server-cert.pem` / `server-key.pem`;
/// `client-cert.pem` / `client-key.pem`; `rogue-ca.pem`;
/// `rogue-client-cert.pem` / `rogue-client-key.pem`.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Generates every certificate.
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("orch-pki-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let pki = Pki { dir };
        let ca = pki.ca("orch test CA", "ca.pem");
        pki.leaf(
            &ca,
            "orch-nats",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        pki.leaf(
            &ca,
            "orch-fleet",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        let rogue = pki.ca("someone else's CA", "rogue-ca.pem");
        pki.leaf(
            &rogue,
            "orch-fleet",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            "rogue-client",
        );
        pki
    }

    fn ca(&self, name: &str, file: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        self.write(file, &ca.pem());
        ca
    }

    fn leaf(
        &self,
        ca: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        file: &str,
    ) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, ca).expect("leaf certificate");
        self.write(&format!("{file}-cert.pem"), &cert.pem());
        self.write(&format!("{file}-key.pem"), &key.serialize_pem());
    }

    fn write(&self, file: &str, text: &str) {
        let path = self.path(file);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// A file's path.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A file's contents.
    pub fn read(&self, file: &str) -> String {
        let path = self.path(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// A file's path as a command-line argument.
    pub fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}
