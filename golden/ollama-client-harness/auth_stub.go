// Harness stand-in for ollama/auth.Sign: the same output ("<base64 ssh public key
// blob>:<base64 raw Ed25519 signature>") from the key file named by HARNESS_KEY,
// parsed with the standard library (no golang.org/x/crypto/ssh offline).
package auth

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

func field(b []byte) ([]byte, []byte) {
	n := binary.BigEndian.Uint32(b)
	return b[4 : 4+n], b[4+n:]
}

func Sign(ctx context.Context, bts []byte) (string, error) {
	data, err := os.ReadFile(os.Getenv("HARNESS_KEY"))
	if err != nil {
		return "", err
	}
	block, _ := pem.Decode(data)
	magic := []byte("openssh-key-v1\x00")
	if block == nil || !bytes.HasPrefix(block.Bytes, magic) {
		return "", errors.New("not an OpenSSH private key")
	}
	rest := block.Bytes[len(magic):]
	_, rest = field(rest)         // cipher "none"
	_, rest = field(rest)         // kdf "none"
	_, rest = field(rest)         // kdf options
	rest = rest[4:]               // number of keys: 1
	pub, rest := field(rest)      // public key blob
	private, _ := field(rest)     // private section
	private = private[8:]         // two check integers
	_, private = field(private)   // key type
	_, private = field(private)   // public key
	secret, _ := field(private)   // 64 bytes: seed and public key
	signature := ed25519.Sign(ed25519.PrivateKey(secret), bts)
	return fmt.Sprintf("%s:%s", base64.StdEncoding.EncodeToString(pub), base64.StdEncoding.EncodeToString(signature)), nil
}
