// Package vaulttest is an in-process fake of the parts of HashiCorp Vault's HTTP API that Postern
// uses, for unit tests. It speaks Vault's real wire format on a loopback httptest server, so the
// code under test runs its real client (github.com/hashicorp/vault/api) against it.
//
//  1. New starts the server with a KV version 2 engine mounted at Options.Mount and a root token.
//  2. The test sets up credentials: CreateToken, AddAppRole + NewSecretID or WrapSecretID,
//     AddKubernetesRole. Tokens carry a TTL, a max TTL, renewability and an optional Policy.
//  3. The code under test talks to URL: KV v2 data, metadata, list, delete, undelete and destroy,
//     with check-and-set (400 on a mismatch, as Vault answers); auth/token/renew-self and
//     lookup-self; AppRole and Kubernetes login on any auth mount; sys/wrapping/unwrap.
//  4. The test changes the world under it: Revoke a token, SetMode to make the server sealed (503)
//     or drop every connection, Put and Get records without counting them, and reads Stats, the
//     requests the server received by kind.
//
// It is not Vault: policies are simple path globs, versions are pruned at 10 as by default, and
// nothing persists.
package vaulttest

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// Mount is where the KV v2 engine is mounted; empty means "secret".
	Mount string
	// RootToken is the token that may do anything and never expires; empty means a random one.
	RootToken string
	// MaxVersions is how many versions of each secret are kept; zero means 10, as Vault does.
	MaxVersions int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// TokenOptions describe a token the server issues.
type TokenOptions struct {
	// TTL is the token's lifetime, and what a renewal without an increment grants; zero means the
	// token never expires.
	TTL time.Duration
	// MaxTTL caps the lifetime across renewals; zero means no cap.
	MaxTTL time.Duration
	// Renewable allows renew-self.
	Renewable bool
	// Policy limits what the token may do; nil allows everything.
	Policy *Policy
}

// Policy is a simplified Vault ACL policy: the first rule whose path matches decides.
type Policy struct {
	Rules []Rule
}

// Rule grants capabilities on a path, written as in Vault: "secret/data/postern/tokens/*", where a
// trailing '*' matches any suffix. Capabilities are "create", "read", "update", "patch", "delete"
// and "list".
type Rule struct {
	Path         string
	Capabilities []string
}

// Mode is how the server answers.
type Mode int

const (
	// Up answers normally.
	Up Mode = iota
	// Sealed answers every request with 503 "Vault is sealed".
	Sealed
	// Dropping closes every connection without an answer.
	Dropping
)

// Stats counts the requests the server received, by kind, including those refused.
type Stats struct {
	Reads    int // KV data and metadata reads
	Writes   int // KV data writes and patches
	Lists    int
	Deletes  int // KV deletes, undeletes and destroys
	Logins   int
	Renewals int
	Lookups  int
	Unwraps  int
	Other    int
}

// Total is the number of requests of every kind.
func (s Stats) Total() int {
	return s.Reads + s.Writes + s.Lists + s.Deletes + s.Logins + s.Renewals + s.Lookups + s.Unwraps + s.Other
}

// KV is the number of KV requests.
func (s Stats) KV() int { return s.Reads + s.Writes + s.Lists + s.Deletes }

// Server is a running fake.
type Server struct {
	// URL is the server's address, for VAULT_ADDR.
	URL string
	// RootToken never expires and may do anything.
	RootToken string

	srv         *httptest.Server
	mount       string
	maxVersions int
	now         func() time.Time

	mu        sync.Mutex
	mode      Mode
	stats     Stats
	kv        map[string]*secretEntry
	tokens    map[string]*token
	appRoles  map[string]*appRole // by role id
	k8sRoles  map[string]*k8sRole // by role name
	wrappings map[string]map[string]any
	issued    []string // every credential ever handed out, for leak checks
}

type token struct {
	id        string
	accessor  string
	opts      TokenOptions
	created   time.Time
	expires   time.Time // zero: never
	revoked   bool
	renewable bool
	path      string
}

type appRole struct {
	opts      TokenOptions
	secretIDs map[string]bool
}

type k8sRole struct {
	jwt  string
	opts TokenOptions
}

type secretEntry struct {
	current  int
	oldest   int
	created  time.Time
	updated  time.Time
	versions map[int]*kvVersion
}

type kvVersion struct {
	data      map[string]any // nil once destroyed
	created   time.Time
	deleted   time.Time
	destroyed bool
}

// New starts a server on 127.0.0.1 and closes it when the test ends.
func New(t testing.TB, o Options) *Server {
	t.Helper()
	s := &Server{
		mount:       strings.Trim(o.Mount, "/"),
		maxVersions: o.MaxVersions,
		now:         o.Now,
		RootToken:   o.RootToken,
		kv:          map[string]*secretEntry{},
		tokens:      map[string]*token{},
		appRoles:    map[string]*appRole{},
		k8sRoles:    map[string]*k8sRole{},
		wrappings:   map[string]map[string]any{},
	}
	if s.mount == "" {
		s.mount = "secret"
	}
	if s.maxVersions == 0 {
		s.maxVersions = 10
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.RootToken == "" {
		s.RootToken = "hvs.root" + random(20)
	}
	s.tokens[s.RootToken] = &token{id: s.RootToken, accessor: random(24), created: s.now(), path: "auth/token/root"}
	s.issued = append(s.issued, s.RootToken)
	s.srv = httptest.NewUnstartedServer(s)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("vaulttest: listening: %v", err)
	}
	s.srv.Listener = l
	s.srv.Start()
	s.URL = s.srv.URL
	t.Cleanup(s.Close)
	return s
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// SetMode changes how the server answers from the next request on.
func (s *Server) SetMode(m Mode) {
	s.mu.Lock()
	s.mode = m
	s.mu.Unlock()
	if m == Dropping {
		s.srv.CloseClientConnections()
	}
}

// Stats returns the requests received so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// ResetStats sets every counter to zero.
func (s *Server) ResetStats() {
	s.mu.Lock()
	s.stats = Stats{}
	s.mu.Unlock()
}

// Issued returns every credential the server ever handed out or accepted: tokens, secret ids,
// wrapping tokens and JWTs. A test checks that none of them shows up in logs or errors.
func (s *Server) Issued() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

// CreateToken issues a token.
func (s *Server) CreateToken(o TokenOptions) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issueLocked(o, "auth/token/create").id
}

func (s *Server) issueLocked(o TokenOptions, path string) *token {
	now := s.now()
	t := &token{id: "hvs." + random(24), accessor: random(24), opts: o, created: now, renewable: o.Renewable, path: path}
	if o.TTL > 0 {
		t.expires = now.Add(o.TTL)
		if o.MaxTTL > 0 && o.MaxTTL < o.TTL {
			t.expires = now.Add(o.MaxTTL)
		}
	}
	s.tokens[t.id] = t
	s.issued = append(s.issued, t.id)
	return t
}

// Revoke makes a token invalid.
func (s *Server) Revoke(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[tok]; ok {
		t.revoked = true
	}
}

// RevokeAll makes every token but the root token invalid, and reports how many were valid.
func (s *Server) RevokeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, t := range s.tokens {
		if id != s.RootToken && s.validLocked(t) {
			t.revoked = true
			n++
		}
	}
	return n
}

// ValidTokens returns how many tokens other than the root token are valid now.
func (s *Server) ValidTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, t := range s.tokens {
		if id != s.RootToken && s.validLocked(t) {
			n++
		}
	}
	return n
}

// AddAppRole creates an AppRole role whose logins get tokens described by o.
func (s *Server) AddAppRole(roleID string, o TokenOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.appRoles[roleID] = &appRole{opts: o, secretIDs: map[string]bool{}}
}

// NewSecretID issues a secret id for the role.
func (s *Server) NewSecretID(roleID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newSecretIDLocked(roleID)
}

func (s *Server) newSecretIDLocked(roleID string) string {
	r, ok := s.appRoles[roleID]
	if !ok {
		panic("vaulttest: no approle " + roleID)
	}
	id := random(32)
	r.secretIDs[id] = true
	s.issued = append(s.issued, id)
	return id
}

// WrapSecretID issues a secret id for the role and returns a single-use response-wrapping token
// whose unwrapped response holds it, as `vault write -wrap-ttl=60s -f auth/approle/role/R/secret-id`
// does.
func (s *Server) WrapSecretID(roleID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.newSecretIDLocked(roleID)
	w := "hvs.wrap" + random(24)
	s.wrappings[w] = map[string]any{"secret_id": id, "secret_id_accessor": random(24), "secret_id_ttl": 0, "secret_id_num_uses": 0}
	s.issued = append(s.issued, w)
	return w
}

// AddKubernetesRole creates a Kubernetes auth role that accepts the service-account token jwt.
func (s *Server) AddKubernetesRole(role, jwt string, o TokenOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.k8sRoles[role] = &k8sRole{jwt: jwt, opts: o}
	s.issued = append(s.issued, jwt)
}

// Put writes a new version of the secret at p (relative to the mount) without counting a request,
// as an administrator's `vault kv put` would, and returns the version.
func (s *Server) Put(p string, data map[string]any) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeLocked(strings.Trim(p, "/"), copyData(data))
}

// Get reads the current version of p without counting a request; ok is false when it is missing
// or deleted.
func (s *Server) Get(p string) (data map[string]any, version int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.kv[strings.Trim(p, "/")]
	if e == nil {
		return nil, 0, false
	}
	v := e.versions[e.current]
	if v == nil || !s.liveLocked(v) {
		return nil, e.current, false
	}
	return copyData(v.data), e.current, true
}

// DeleteMetadata removes p and all its versions without counting a request, as
// `vault kv metadata delete` would.
func (s *Server) DeleteMetadata(p string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.kv, strings.Trim(p, "/"))
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimPrefix(r.URL.Path, "/v1/")
	method := r.Method
	if method == http.MethodGet && r.URL.Query().Get("list") == "true" {
		method = "LIST"
	}
	s.mu.Lock()
	s.countLocked(method, p)
	mode := s.mode
	s.mu.Unlock()
	switch mode {
	case Sealed:
		writeErrors(w, http.StatusServiceUnavailable, "Vault is sealed")
		return
	case Dropping:
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}

	var body map[string]any
	if r.Body != nil {
		dec := json.NewDecoder(r.Body)
		dec.UseNumber()
		if err := dec.Decode(&body); err != nil && err.Error() != "EOF" {
			writeErrors(w, http.StatusBadRequest, "failed to parse JSON input: "+err.Error())
			return
		}
	}
	tok := r.Header.Get("X-Vault-Token")

	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case p == "sys/wrapping/unwrap":
		s.unwrapLocked(w, tok, body)
	case p == "auth/token/renew-self":
		s.renewLocked(w, tok, body)
	case p == "auth/token/lookup-self":
		s.lookupLocked(w, tok)
	case strings.HasPrefix(p, "auth/") && strings.HasSuffix(p, "/login"):
		s.loginLocked(w, body)
	case strings.HasPrefix(p, s.mount+"/"):
		s.kvLocked(w, r, method, tok, strings.TrimPrefix(p, s.mount+"/"), body)
	default:
		writeErrors(w, http.StatusNotFound, "no handler for route \""+p+"\". route entry not found.")
	}
}

func (s *Server) countLocked(method, p string) {
	st := &s.stats
	switch {
	case p == "sys/wrapping/unwrap":
		st.Unwraps++
	case p == "auth/token/renew-self":
		st.Renewals++
	case p == "auth/token/lookup-self":
		st.Lookups++
	case strings.HasPrefix(p, "auth/") && strings.HasSuffix(p, "/login"):
		st.Logins++
	case strings.HasPrefix(p, s.mount+"/"):
		rest := strings.TrimPrefix(p, s.mount+"/")
		switch {
		case method == "LIST":
			st.Lists++
		case method == http.MethodGet:
			st.Reads++
		case method == http.MethodDelete || strings.HasPrefix(rest, "delete/") || strings.HasPrefix(rest, "undelete/") || strings.HasPrefix(rest, "destroy/"):
			st.Deletes++
		default:
			st.Writes++
		}
	default:
		st.Other++
	}
}

func (s *Server) validLocked(t *token) bool {
	return t != nil && !t.revoked && (t.expires.IsZero() || s.now().Before(t.expires))
}

// authLocked returns the token behind the header, or answers 403 and returns nil.
func (s *Server) authLocked(w http.ResponseWriter, tok string) *token {
	t := s.tokens[tok]
	if !s.validLocked(t) {
		writeErrors(w, http.StatusForbidden, "permission denied")
		return nil
	}
	return t
}

func (s *Server) allowedLocked(t *token, p string, caps ...string) bool {
	if t.opts.Policy == nil {
		return true
	}
	for _, r := range t.opts.Policy.Rules {
		if !globMatch(r.Path, p) {
			continue
		}
		for _, have := range r.Capabilities {
			if have == "deny" {
				return false
			}
			for _, want := range caps {
				if have == want {
					return true
				}
			}
		}
		return false
	}
	return false
}

func globMatch(pattern, p string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(p, prefix)
	}
	return pattern == p
}

func (s *Server) authBody(t *token, metadata map[string]any) map[string]any {
	ttl := 0
	if !t.expires.IsZero() {
		ttl = seconds(t.expires.Sub(s.now()))
	}
	return map[string]any{
		"client_token":   t.id,
		"accessor":       t.accessor,
		"policies":       []string{"default"},
		"token_policies": []string{"default"},
		"metadata":       metadata,
		"lease_duration": ttl,
		"renewable":      t.renewable,
		"entity_id":      "",
		"token_type":     "service",
		"orphan":         true,
	}
}

func (s *Server) loginLocked(w http.ResponseWriter, body map[string]any) {
	if roleID, ok := body["role_id"].(string); ok {
		secretID, _ := body["secret_id"].(string)
		r := s.appRoles[roleID]
		if r == nil || !r.secretIDs[secretID] {
			writeErrors(w, http.StatusBadRequest, "invalid role or secret ID")
			return
		}
		t := s.issueLocked(r.opts, "auth/approle/login")
		writeJSON(w, http.StatusOK, envelope(nil, s.authBody(t, map[string]any{"role_name": "postern"})))
		return
	}
	if role, ok := body["role"].(string); ok {
		jwt, _ := body["jwt"].(string)
		r := s.k8sRoles[role]
		if r == nil {
			writeErrors(w, http.StatusBadRequest, "invalid role name \""+role+"\"")
			return
		}
		if jwt == "" || jwt != r.jwt {
			writeErrors(w, http.StatusForbidden, "permission denied")
			return
		}
		t := s.issueLocked(r.opts, "auth/kubernetes/login")
		writeJSON(w, http.StatusOK, envelope(nil, s.authBody(t, map[string]any{"role": role, "service_account_name": "postern"})))
		return
	}
	writeErrors(w, http.StatusBadRequest, "missing role_id or role")
}

func (s *Server) renewLocked(w http.ResponseWriter, tok string, body map[string]any) {
	t := s.authLocked(w, tok)
	if t == nil {
		return
	}
	if !t.renewable {
		writeErrors(w, http.StatusBadRequest, "lease is not renewable")
		return
	}
	inc := t.opts.TTL
	if n, ok := body["increment"].(json.Number); ok {
		if v, err := n.Int64(); err == nil && v > 0 {
			inc = time.Duration(v) * time.Second
		}
	}
	now := s.now()
	end := now.Add(inc)
	if t.opts.MaxTTL > 0 && end.After(t.created.Add(t.opts.MaxTTL)) {
		end = t.created.Add(t.opts.MaxTTL)
		if end.Sub(now) < time.Second {
			// What Vault answers when less than a second is left before the max TTL.
			writeErrors(w, http.StatusInternalServerError, "past the max TTL, cannot renew")
			return
		}
	}
	t.expires = end
	writeJSON(w, http.StatusOK, envelope(nil, s.authBody(t, nil)))
}

func (s *Server) lookupLocked(w http.ResponseWriter, tok string) {
	t := s.authLocked(w, tok)
	if t == nil {
		return
	}
	ttl := 0
	var expire any
	if !t.expires.IsZero() {
		ttl = seconds(t.expires.Sub(s.now()))
		expire = t.expires.UTC().Format(time.RFC3339Nano)
	}
	writeJSON(w, http.StatusOK, envelope(map[string]any{
		"accessor":         t.accessor,
		"creation_time":    t.created.Unix(),
		"creation_ttl":     int(t.opts.TTL / time.Second),
		"display_name":     "token",
		"entity_id":        "",
		"expire_time":      expire,
		"explicit_max_ttl": int(t.opts.MaxTTL / time.Second),
		"id":               t.id,
		"issue_time":       t.created.UTC().Format(time.RFC3339Nano),
		"meta":             nil,
		"num_uses":         0,
		"orphan":           true,
		"path":             t.path,
		"policies":         []string{"default"},
		"renewable":        t.renewable,
		"ttl":              ttl,
		"type":             "service",
	}, nil))
}

func (s *Server) unwrapLocked(w http.ResponseWriter, tok string, body map[string]any) {
	wt := tok
	if b, ok := body["token"].(string); ok && b != "" {
		wt = b
	}
	data, ok := s.wrappings[wt]
	if !ok {
		writeErrors(w, http.StatusBadRequest, "wrapping token is not valid or does not exist")
		return
	}
	delete(s.wrappings, wt)
	writeJSON(w, http.StatusOK, envelope(data, nil))
}

// kvLocked serves the KV v2 engine: rest is "data/<path>", "metadata/<path>", "delete/<path>",
// "undelete/<path>" or "destroy/<path>".
func (s *Server) kvLocked(w http.ResponseWriter, r *http.Request, method, tok, rest string, body map[string]any) {
	t := s.authLocked(w, tok)
	if t == nil {
		return
	}
	kind, p, _ := strings.Cut(rest, "/")
	p = strings.Trim(p, "/")
	full := s.mount + "/" + kind + "/" + p
	if method == "LIST" && kind == "metadata" {
		full += "/"
	}
	e := s.kv[p]
	var caps []string
	switch {
	case method == "LIST":
		caps = []string{"list"}
	case method == http.MethodGet:
		caps = []string{"read"}
	case method == http.MethodDelete:
		caps = []string{"delete"}
	case method == http.MethodPatch:
		caps = []string{"patch"}
	case kind == "data" && e == nil:
		caps = []string{"create"}
	default:
		caps = []string{"update"}
	}
	if !s.allowedLocked(t, full, caps...) {
		writeErrors(w, http.StatusForbidden, "1 error occurred:\n\t* permission denied\n\n")
		return
	}
	switch kind + " " + method {
	case "data GET":
		s.readLocked(w, r, e)
	case "data POST", "data PUT", "data PATCH":
		s.putLocked(w, p, e, body, method == http.MethodPatch)
	case "data DELETE":
		if e != nil {
			if v := e.versions[e.current]; v != nil && v.deleted.IsZero() {
				v.deleted = s.now()
			}
		}
		w.WriteHeader(http.StatusNoContent)
	case "delete POST", "delete PUT", "undelete POST", "undelete PUT", "destroy POST", "destroy PUT":
		if e != nil {
			for _, n := range versionList(body["versions"]) {
				v := e.versions[n]
				if v == nil {
					continue
				}
				switch kind {
				case "delete":
					if v.deleted.IsZero() {
						v.deleted = s.now()
					}
				case "undelete":
					if !v.destroyed {
						v.deleted = time.Time{}
					}
				case "destroy":
					v.destroyed, v.data = true, nil
				}
			}
		}
		w.WriteHeader(http.StatusNoContent)
	case "metadata GET":
		if e == nil {
			writeErrors(w, http.StatusNotFound)
			return
		}
		writeJSON(w, http.StatusOK, envelope(s.metadataLocked(e), nil))
	case "metadata LIST":
		s.listLocked(w, p)
	case "metadata DELETE":
		delete(s.kv, p)
		w.WriteHeader(http.StatusNoContent)
	default:
		writeErrors(w, http.StatusMethodNotAllowed, "unsupported operation")
	}
}

func (s *Server) readLocked(w http.ResponseWriter, r *http.Request, e *secretEntry) {
	if e == nil {
		writeErrors(w, http.StatusNotFound)
		return
	}
	n := e.current
	if q := r.URL.Query().Get("version"); q != "" && q != "0" {
		var err error
		if n, err = strconv.Atoi(q); err != nil {
			writeErrors(w, http.StatusBadRequest, "invalid version")
			return
		}
	}
	v := e.versions[n]
	if v == nil {
		writeErrors(w, http.StatusNotFound)
		return
	}
	meta := s.versionMetaLocked(v, n)
	if !s.liveLocked(v) {
		writeJSON(w, http.StatusNotFound, envelope(map[string]any{"data": nil, "metadata": meta}, nil))
		return
	}
	writeJSON(w, http.StatusOK, envelope(map[string]any{"data": copyData(v.data), "metadata": meta}, nil))
}

func (s *Server) putLocked(w http.ResponseWriter, p string, e *secretEntry, body map[string]any, patch bool) {
	data, ok := body["data"].(map[string]any)
	if !ok {
		writeErrors(w, http.StatusBadRequest, "no data provided")
		return
	}
	current := 0
	if e != nil {
		current = e.current
	}
	if opts, ok := body["options"].(map[string]any); ok {
		if raw, ok := opts["cas"]; ok {
			cas, err := strconv.Atoi(fmt.Sprint(raw))
			if err != nil {
				writeErrors(w, http.StatusBadRequest, "invalid cas parameter")
				return
			}
			if cas != current {
				writeErrors(w, http.StatusBadRequest, "check-and-set parameter did not match the current version")
				return
			}
		}
	}
	if patch {
		var v *kvVersion
		if e != nil {
			v = e.versions[e.current]
		}
		if v == nil || !s.liveLocked(v) {
			writeErrors(w, http.StatusNotFound)
			return
		}
		data = mergePatch(copyData(v.data), data)
	}
	n := s.writeLocked(p, copyData(data))
	e = s.kv[p]
	writeJSON(w, http.StatusOK, envelope(s.versionMetaLocked(e.versions[n], n), nil))
}

func (s *Server) writeLocked(p string, data map[string]any) int {
	now := s.now()
	e := s.kv[p]
	if e == nil {
		e = &secretEntry{created: now, versions: map[int]*kvVersion{}}
		s.kv[p] = e
	}
	e.current++
	e.updated = now
	e.versions[e.current] = &kvVersion{data: data, created: now}
	// Like Vault, oldest_version stays 0 until a version is pruned.
	for len(e.versions) > s.maxVersions {
		delete(e.versions, slices.Min(slices.Collect(maps.Keys(e.versions))))
		e.oldest = slices.Min(slices.Collect(maps.Keys(e.versions)))
	}
	return e.current
}

func (s *Server) liveLocked(v *kvVersion) bool {
	return !v.destroyed && (v.deleted.IsZero() || v.deleted.After(s.now()))
}

func (s *Server) versionMetaLocked(v *kvVersion, n int) map[string]any {
	return map[string]any{
		"created_time":    v.created.UTC().Format(time.RFC3339Nano),
		"custom_metadata": nil,
		"deletion_time":   timeString(v.deleted),
		"destroyed":       v.destroyed,
		"version":         n,
	}
}

func (s *Server) metadataLocked(e *secretEntry) map[string]any {
	versions := map[string]any{}
	for n, v := range e.versions {
		versions[strconv.Itoa(n)] = map[string]any{
			"created_time":  v.created.UTC().Format(time.RFC3339Nano),
			"deletion_time": timeString(v.deleted),
			"destroyed":     v.destroyed,
		}
	}
	return map[string]any{
		"cas_required":         false,
		"created_time":         e.created.UTC().Format(time.RFC3339Nano),
		"current_version":      e.current,
		"custom_metadata":      nil,
		"delete_version_after": "0s",
		"max_versions":         0,
		"oldest_version":       e.oldest,
		"updated_time":         e.updated.UTC().Format(time.RFC3339Nano),
		"versions":             versions,
	}
}

func (s *Server) listLocked(w http.ResponseWriter, dir string) {
	prefix := ""
	if dir != "" {
		prefix = dir + "/"
	}
	seen := map[string]bool{}
	for p := range s.kv {
		rest, ok := strings.CutPrefix(p, prefix)
		if !ok || rest == "" {
			continue
		}
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			rest = rest[:i+1]
		}
		seen[rest] = true
	}
	if len(seen) == 0 {
		writeErrors(w, http.StatusNotFound)
		return
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	writeJSON(w, http.StatusOK, envelope(map[string]any{"keys": keys}, nil))
}

func versionList(v any) []int {
	raw, _ := v.([]any)
	var out []int
	for _, x := range raw {
		if n, err := strconv.Atoi(fmt.Sprint(x)); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// mergePatch applies an RFC 7386 JSON merge patch.
func mergePatch(dst, patch map[string]any) map[string]any {
	for k, v := range patch {
		if v == nil {
			delete(dst, k)
			continue
		}
		if pm, ok := v.(map[string]any); ok {
			if dm, ok := dst[k].(map[string]any); ok {
				dst[k] = mergePatch(dm, pm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

// copyData deep-copies a JSON object, keeping numbers as json.Number.
func copyData(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic("vaulttest: data is not JSON: " + err.Error())
	}
	var out map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		panic("vaulttest: " + err.Error())
	}
	return out
}

func envelope(data, auth map[string]any) map[string]any {
	var d, a any
	if data != nil {
		d = data
	}
	if auth != nil {
		a = auth
	}
	return map[string]any{
		"request_id":     random(8) + "-" + random(4) + "-" + random(4) + "-" + random(4) + "-" + random(12),
		"lease_id":       "",
		"renewable":      false,
		"lease_duration": 0,
		"data":           d,
		"wrap_info":      nil,
		"warnings":       nil,
		"auth":           a,
		"mount_type":     "",
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErrors(w http.ResponseWriter, status int, msgs ...string) {
	if msgs == nil {
		msgs = []string{}
	}
	writeJSON(w, status, map[string]any{"errors": msgs})
}

// seconds rounds d to whole seconds, as Vault reports TTLs.
func seconds(d time.Duration) int { return int(max(d+time.Second/2, 0) / time.Second) }

func timeString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

func random(n int) string {
	b := make([]byte, n)
	for i := range b {
		x, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			panic(err)
		}
		b[i] = alphabet[x.Int64()]
	}
	return string(b)
}

var _ http.Handler = (*Server)(nil)
