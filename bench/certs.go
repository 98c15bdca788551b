package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certFiles are the PEM files of the https scenarios: a CA that Caddy
// trusts, and the certificate for 127.0.0.1 it signed, which every backend
// presents.
type certFiles struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// makeCertificates writes a fresh CA and a certificate for 127.0.0.1 into
// dir, valid for a day.
func makeCertificates(dir string) (certFiles, error) {
	files := certFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "backend.pem"), Key: filepath.Join(dir, "backend-key.pem")}
	caTemplate := certTemplate(1, "lbpool bench CA")
	caTemplate.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	caTemplate.BasicConstraintsValid, caTemplate.IsCA = true, true
	caDER, ca, caKey, err := issue(caTemplate, nil, nil)
	if err != nil {
		return files, fmt.Errorf("CA certificate: %w", err)
	}
	leaf := certTemplate(2, "127.0.0.1")
	leaf.KeyUsage = x509.KeyUsageDigitalSignature
	leaf.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	leaf.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	leafDER, _, key, err := issue(leaf, ca, caKey)
	if err != nil {
		return files, fmt.Errorf("backend certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return files, err
	}
	for _, f := range []struct {
		path, kind string
		der        []byte
	}{{files.CA, "CERTIFICATE", caDER}, {files.Cert, "CERTIFICATE", leafDER}, {files.Key, "EC PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.kind, Bytes: f.der}), 0o600); err != nil {
			return files, err
		}
	}
	return files, nil
}

// certTemplate is a certificate valid from an hour ago for a day.
func certTemplate(serial int64, name string) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
	}
}

// issue makes a key and a certificate for it from tmpl, signed by parent
// (nil: self-signed).
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) ([]byte, *x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return der, cert, key, err
}
