//! Certificates for tests, made with rcgen: a CA of the test's own and server certificates for
//! 127.0.0.1 / localhost signed by it, as PEM files in a temp dir of their own.

use std::path::PathBuf;

use linkcast::tls::Trust;

/// A CA and the PEM files of a server certificate it signed, in a temp dir of their own.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("linkcast-pki-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("linkcast test CA {tag}"));
        let ca = params.self_signed(&ca_key).expect("ca");
        let ca_pem = ca.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write ca");
        Pki { dir, ca_pem, ca, ca_key }
    }

    /// Issues a server certificate for 127.0.0.1 and localhost into `name`.pem / `name`.key;
    /// returns the certificate's DER.
    pub fn issue(&self, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).expect("signed");
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
        cert.der().to_vec()
    }

    /// Issues a client certificate (extended key usage: client authentication) into
    /// `name`.pem / `name`.key: what a Link presents to hubs that require mutual TLS.
    pub fn issue_client(&self, name: &str) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name.to_owned());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).expect("signed");
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).expect("write key");
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn trust(&self) -> Trust {
        assert!(!self.ca_pem.is_empty());
        Trust::from_ca_pem(&self.path("ca.pem")).expect("ca trust")
    }
}


impl Drop for Pki {
    /// The keys and certificates go with the test (kept when it fails, for a look).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
