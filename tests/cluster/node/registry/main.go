// Command registry is the local cluster's private image registry (../node.sh): an OCI registry
// kept in memory (go-containerregistry's pkg/registry; a restart loses every image), served with
// TLS on the loopback only, that asks for HTTP Basic credentials on every request, as an ACR
// instance does:
//
//   - the fixed push credential (--push-user/--push-password), used once to push the test image
//     (and accepted for pulls too);
//   - any other username/password is accepted only if the fake cloud says so
//     (POST <--fake-url>/_fake/registry-login, {"username", "password"} -> {"valid": bool}), asked
//     anew on every request: a temporary password works until the fake says it has expired.
//
// A refused or missing credential gets 401 with `WWW-Authenticate: Basic realm=...`; a fake that
// cannot be asked gets 502. Every request is logged as one JSON line to --log:
// {"time", "method", "path", "ns", "username", "status", "auth", "reason"}, so tests see which
// username each pull presented ("ns" is the registry name containerd pulled from, which it sends
// as the ?ns= parameter to a mirror host). With --port-file, the chosen port is written there once listening.
package main

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

type server struct {
	fakeURL, pushUser, pushPassword, realm string
	client                                 *http.Client
	logMu                                  sync.Mutex
	log                                    *os.File
	registry                               http.Handler
}

// check answers which authority accepted the credential ("push" or "fake"), or why it was refused.
func (s *server) check(user, password string) (ok bool, by, reason string, err error) {
	if s.pushUser != "" && subtle.ConstantTimeCompare([]byte(user), []byte(s.pushUser)) == 1 &&
		subtle.ConstantTimeCompare([]byte(password), []byte(s.pushPassword)) == 1 {
		return true, "push", "", nil
	}
	body, _ := json.Marshal(map[string]string{"username": user, "password": password})
	resp, err := s.client.Post(s.fakeURL+"/_fake/registry-login", "application/json", bytes.NewReader(body))
	if err != nil {
		return false, "fake", "", err
	}
	defer resp.Body.Close()
	var answer struct {
		Valid  bool   `json:"valid"`
		Reason string `json:"reason"`
	}
	if resp.StatusCode != http.StatusOK {
		return false, "fake", "", fmt.Errorf("registry-login answered %s", resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&answer); err != nil {
		return false, "fake", "", fmt.Errorf("registry-login: %w", err)
	}
	return answer.Valid, "fake", answer.Reason, nil
}

type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *server) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rec := &recorder{ResponseWriter: w}
	user, password, hasAuth := req.BasicAuth()
	by, reason := "none", "no credentials"
	defer func() { s.record(req, user, rec.status, by, reason) }()
	if hasAuth {
		ok, who, why, err := s.check(user, password)
		by, reason = who, why
		if err != nil {
			reason = err.Error()
			http.Error(rec, "cannot ask the fake cloud: "+err.Error(), http.StatusBadGateway)
			return
		}
		if ok {
			s.registry.ServeHTTP(rec, req)
			return
		}
	}
	rec.Header().Set("WWW-Authenticate", "Basic realm="+strconv.Quote(s.realm))
	http.Error(rec, "authentication required", http.StatusUnauthorized)
}

func (s *server) record(req *http.Request, user string, status int, by, reason string) {
	if status == 0 {
		status = http.StatusOK
	}
	line, _ := json.Marshal(map[string]any{
		"time":     time.Now().UTC().Format(time.RFC3339Nano),
		"method":   req.Method,
		"path":     req.URL.Path,
		"ns":       req.URL.Query().Get("ns"),
		"username": user,
		"status":   status,
		"auth":     by,
		"reason":   reason,
	})
	s.logMu.Lock()
	defer s.logMu.Unlock()
	if _, err := s.log.Write(append(line, '\n')); err != nil {
		log.Printf("registry: request log: %v", err)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to listen on (port 0: any free port)")
	portFile := flag.String("port-file", "", "write the chosen port here once listening")
	cert := flag.String("cert", "", "TLS certificate (PEM)")
	key := flag.String("key", "", "TLS private key (PEM)")
	fakeURL := flag.String("fake-url", "", "the fake cloud's URL, asked about every credential but the push one")
	pushUser := flag.String("push-user", "", "the fixed push username")
	pushPassword := flag.String("push-password", "", "the fixed push password")
	logPath := flag.String("log", "", "append one JSON line per request to this file")
	realm := flag.String("realm", "acr-helper-test-registry", "the Basic realm announced on 401")
	flag.Parse()
	if *cert == "" || *key == "" || *fakeURL == "" || *logPath == "" {
		log.Fatal("registry: --cert, --key, --fake-url and --log are required")
	}
	host, _, err := net.SplitHostPort(*listen)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		log.Fatalf("registry: --listen %q is not a loopback address", *listen)
	}
	logFile, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatalf("registry: %v", err)
	}
	s := &server{
		fakeURL: *fakeURL, pushUser: *pushUser, pushPassword: *pushPassword, realm: *realm,
		client: &http.Client{Timeout: 10 * time.Second}, log: logFile,
		registry: registry.New(registry.Logger(log.New(io.Discard, "", 0))),
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("registry: %v", err)
	}
	if *portFile != "" {
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		if err := os.WriteFile(*portFile+".tmp", []byte(port), 0o644); err != nil {
			log.Fatalf("registry: %v", err)
		}
		if err := os.Rename(*portFile+".tmp", *portFile); err != nil {
			log.Fatalf("registry: %v", err)
		}
	}
	log.Printf("registry: serving https://%s", ln.Addr())
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 30 * time.Second}
	log.Fatal(srv.ServeTLS(ln, *cert, *key))
}
