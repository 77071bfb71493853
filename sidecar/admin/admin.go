// Package admin is Postern's HTTP side for operators and monitoring: liveness (/healthz),
// readiness (/readyz), Prometheus metrics (/metrics) and the status of every project
// (/status as HTML, /api/v1/projects as JSON), and, when configured, the project API that reads and
// writes projects (/api/v1/projects/{name}, see api.go). It listens on loopback, or, with TLS
// (tls.go: certificate files read again when they change), on any address.
//
//  1. New takes the checks that decide readiness, the function that lists project status, the
//     read token, and the store and bearer token of the project API.
//  2. Handler routes the requests; Serve runs it on a listener until ctx ends.
//  3. /healthz and /readyz are open and name no project: /readyz shows which checks fail, and
//     why only to a caller with a token. /metrics, /status and /api/v1/projects name projects,
//     senders and upstreams, so they need the read token (admin.read_token_file) or the project
//     API's token: "Authorization: Bearer <token>" (a Prometheus scrape's bearer_token_file), or
//     HTTP Basic with the token as the password and any user name, which a browser asks for.
//     The API's GETs admit the read token too; its writes only the API's token. Protected routes
//     (Go's profiler) need a token as /metrics does.
//  4. NewSignIn serves the sign-in pages alone, for a listener of their own behind a reverse proxy.
//  5. The status page shows state, with what to do next for each problem, in the words of the
//     provider or the upstream after secret.Scrub. Only the project API writes, and only with
//     its bearer token.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/postern/postern/sidecar/secret"
)

// Check is one readiness condition. It returns nil when ready, or an error that says what is
// wrong and what to do; Degraded errors report but keep the process ready.
type Check struct {
	Name string
	Func func(ctx context.Context) error
}

// ErrDegraded marks a check failure that should not take Postern out of service (for example the
// store is unreachable but cached credentials still work). Wrap it: fmt.Errorf("...: %w", ErrDegraded).
var ErrDegraded = errors.New("degraded")

// ProjectStatus is one row of the status page, from the health model (package health).
type ProjectStatus struct {
	Name     string   `json:"name"`
	Enabled  bool     `json:"enabled"`
	Auth     string   `json:"auth"`
	Upstream string   `json:"upstream"`
	Senders  []string `json:"senders"`
	// State is the older, finer state: ok, needs_reauth, unhealthy (the credential was refused or
	// cannot be had), upstream_down, rate_limited, disabled, removed, client_secret_expiring or
	// client_secret_expired.
	State string `json:"state"`
	// Health is ok, degraded or failing; HealthReason says why when it is not ok (a health.Reason:
	// credential_refused, needs_sign_in, upstream_down, ...), Since when it became so.
	Health       string    `json:"health"`
	HealthReason string    `json:"health_reason,omitempty"`
	Since        time.Time `json:"since,omitzero"`
	Reason       string    `json:"reason,omitempty"` // why, in the provider's or upstream's words
	Action       string    `json:"action,omitempty"` // what to do next
	// LastDelivery, LastAttempt and LastErrorAt are when the last accepted delivery, the last
	// attempt and the last failure ended; LastError is that failure in the upstream's words.
	LastDelivery time.Time `json:"last_delivery,omitzero"`
	LastAttempt  time.Time `json:"last_attempt,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	// Failures counts the failed attempts since the last success.
	Failures int `json:"failures,omitempty"`
	// SentHour and SentDay count the messages delivered in the last hour and day by this Postern;
	// PerMinute and PerDay are the project's limits (messages per minute, recipients per day; 0: none).
	SentHour  int       `json:"sent_last_hour"`
	SentDay   int       `json:"sent_last_day"`
	PerMinute int       `json:"limit_messages_per_minute,omitempty"`
	PerDay    int       `json:"limit_recipients_per_day,omitempty"`
	Expiry    time.Time `json:"token_expiry,omitzero"`
	// ClientSecretExpires is when the app registration's client secret expires, if known.
	ClientSecretExpires time.Time `json:"client_secret_expires,omitzero"`
	SignInURL           string    `json:"sign_in_url,omitempty"`
}

// Options configures the admin server. The zero value serves health endpoints only.
type Options struct {
	Logger *slog.Logger
	// Version is the running Postern's version, shown on the status page. Empty shows none.
	Version  string
	Registry *prometheus.Registry // nil: no /metrics
	// Gatherer, when set, is what /metrics serves instead of Registry itself (Registry seen
	// through health.WithoutLabel, for example).
	Gatherer prometheus.Gatherer
	Checks   []Check                               // readiness
	Projects func(context.Context) []ProjectStatus // nil: no project status
	// Extra lets other packages add routes (the OAuth sign-in pages).
	Extra map[string]http.Handler
	// Protected adds routes that, like /metrics, need the read token (Go's profiler).
	Protected map[string]http.Handler
	// TLS, when set, serves HTTPS (see Certificate.TLSConfig); nil serves plain HTTP.
	TLS *tls.Config
	// API turns the project API on. nil: its routes answer 404 saying how to turn it on.
	API *APIOptions
	// ReadTimeout bounds reading one request, its body included; Go's HTTP server also cancels the
	// request's context when it passes. Zero means DefaultReadTimeout.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its header to the end of its response. Zero
	// means DefaultWriteTimeout.
	WriteTimeout time.Duration
	// IdleTimeout closes a kept-alive connection without a request for this long. Zero means
	// DefaultIdleTimeout.
	IdleTimeout time.Duration
	// SignInLink makes a fresh sign-in link for the named project (the status page's button,
	// which needs the project API's token). Nil: no button.
	SignInLink func(ctx context.Context, project string) (string, error)
	// ReadToken admits reads of /metrics, /status and /api/v1/projects (see LoadToken); the API's
	// token admits them too. With neither, those answer 401 saying how to set one.
	ReadToken secret.Secret
}

// Limits of the admin server.
const (
	// DefaultReadHeaderTimeout bounds reading a request's header.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultReadTimeout bounds reading a whole request. Handlers that work longer (the sign-in
	// callback) do not depend on the request's context.
	DefaultReadTimeout = time.Minute
	// DefaultWriteTimeout is longer than the sign-in callback's two steps of at most a minute each
	// (signin.Options.Timeout) and Go profiler's default 30-second profile.
	DefaultWriteTimeout = 3 * time.Minute
	// DefaultIdleTimeout closes idle kept-alive connections.
	DefaultIdleTimeout = 2 * time.Minute
	// MaxHeaderBytes bounds a request's header.
	MaxHeaderBytes = 64 << 10
	// MaxBodyBytes bounds every request's body; handlers may bound theirs further.
	MaxBodyBytes = MaxAPIBodyBytes
)

// Server is the admin HTTP server.
type Server struct {
	opts    Options
	mux     *http.ServeMux
	handler http.Handler
	tokens  [][sha256.Size]byte // the digests of the tokens that admit reads
	// adminToken is the digest of the project API's token, which admits the status page's
	// writes; zero without it.
	adminToken [sha256.Size]byte
}

// New builds the server.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	s := &Server{opts: opts, mux: http.NewServeMux()}
	s.handler = limitBodies(s.mux)
	if !opts.ReadToken.IsZero() {
		s.tokens = append(s.tokens, sha256.Sum256([]byte(opts.ReadToken.Reveal())))
	}
	if a := opts.API; a != nil && !a.Token.IsZero() {
		s.adminToken = sha256.Sum256([]byte(a.Token.Reveal()))
		s.tokens = append(s.tokens, s.adminToken)
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	if opts.Registry != nil {
		var g prometheus.Gatherer = opts.Registry
		if opts.Gatherer != nil {
			g = opts.Gatherer
		}
		s.mux.Handle("GET /metrics", s.reader(promhttp.HandlerFor(g, promhttp.HandlerOpts{})))
	}
	if opts.Projects != nil {
		s.mux.Handle("GET /api/v1/projects", s.reader(http.HandlerFunc(s.projectsJSON)))
		s.mux.Handle("GET /status", s.reader(http.HandlerFunc(s.statusPage)))
		s.mux.Handle("POST /status/sign-in-link/{name}", s.admin(http.HandlerFunc(s.signInLink)))
		s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/status", http.StatusFound)
		})
	}
	var api *projectAPI
	switch a := opts.API; {
	case a == nil:
	case a.Store == nil || a.Token.IsZero():
		opts.Logger.Error("the project API is off: it needs both a store and a bearer token")
	default:
		api = &projectAPI{st: a.Store, token: sha256.Sum256([]byte(a.Token.Reveal())), log: opts.Logger, reader: s.readAllowed}
	}
	api.routes(s.mux)
	for pattern, h := range opts.Extra {
		s.mux.Handle(pattern, h)
	}
	for pattern, h := range opts.Protected {
		s.mux.Handle(pattern, s.reader(h))
	}
	return s
}

// NewSignIn builds a server of routes only (the sign-in pages) and /healthz, for a listener of its
// own (listen.signin) that faces a reverse proxy: nothing of the admin pages is served there. Of
// opts it reads Logger, the timeouts and TLS.
func NewSignIn(opts Options, routes map[string]http.Handler) *Server {
	s := New(Options{Logger: opts.Logger, ReadTimeout: opts.ReadTimeout, WriteTimeout: opts.WriteTimeout, IdleTimeout: opts.IdleTimeout, TLS: opts.TLS})
	s.mux = http.NewServeMux()
	s.handler = limitBodies(s.mux)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	for pattern, h := range routes {
		s.mux.Handle(pattern, h)
	}
	return s
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.handler }

// limitBodies bounds every request's body to MaxBodyBytes.
func limitBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		h.ServeHTTP(w, r)
	})
}

// Serve runs the server on l until ctx ends, then shuts it down within a few seconds. Every request
// is bounded in time (Options.ReadTimeout, WriteTimeout, IdleTimeout) and size (MaxHeaderBytes,
// MaxBodyBytes), so a slow or endless client holds a connection for a bounded time only.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: min(DefaultReadHeaderTimeout, s.opts.ReadTimeout),
		ReadTimeout:       s.opts.ReadTimeout,
		WriteTimeout:      s.opts.WriteTimeout,
		IdleTimeout:       s.opts.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(tlsListener(l, s.opts.TLS))
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// readAllowed reports whether r carries a token that admits reads: as a bearer token, or as the
// password of HTTP Basic.
func (s *Server) readAllowed(r *http.Request) bool {
	sum, ok := presented(r)
	if !ok {
		return false
	}
	match := 0
	for _, t := range s.tokens {
		match |= subtle.ConstantTimeCompare(sum[:], t[:])
	}
	return match == 1
}

// presented is the digest of the token r carries, as a bearer token or as the password of HTTP
// Basic.
func presented(r *http.Request) ([sha256.Size]byte, bool) {
	got := ""
	if _, pw, ok := r.BasicAuth(); ok {
		got = pw
	} else if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		got = strings.TrimSpace(tok)
	}
	if got == "" {
		return [sha256.Size]byte{}, false
	}
	return sha256.Sum256([]byte(got)), true
}

// reader admits requests that readAllowed admits; others get 401 with a Basic challenge (so that
// a browser asks for the token) and a Bearer one.
func (s *Server) reader(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if s.readAllowed(r) {
			next.ServeHTTP(w, r)
			return
		}
		msg := "this page names projects and needs a token: send \"Authorization: Bearer <token>\" with the content of admin.read_token_file " +
			"(or api.token_file), or, in a browser, give the token as the password (any user name)"
		if len(s.tokens) == 0 {
			msg = "this page needs a token, and none is configured: set admin.read_token_file in Postern's configuration and restart Postern"
		} else if r.Header.Get("Authorization") != "" {
			s.opts.Logger.Warn("admin: refused a read with a wrong token", "path", r.URL.Path, "remote", r.RemoteAddr)
			msg = "the token is wrong: use the content of admin.read_token_file (or api.token_file)"
		}
		w.Header().Add("WWW-Authenticate", `Basic realm="postern", charset="UTF-8"`)
		w.Header().Add("WWW-Authenticate", `Bearer realm="postern"`)
		writeError(w, http.StatusUnauthorized, msg)
	})
}

type checkResult struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Degraded bool   `json:"degraded,omitempty"`
	Error    string `json:"error,omitempty"`
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	ready := true
	detail := s.readAllowed(r) // why a check fails may name a project or a path
	results := make([]checkResult, 0, len(s.opts.Checks))
	for _, c := range s.opts.Checks {
		res := checkResult{Name: c.Name, OK: true}
		if err := c.Func(ctx); err != nil {
			res.OK = false
			if detail {
				res.Error = secret.Scrub(err.Error())
			}
			res.Degraded = errors.Is(err, ErrDegraded)
			if !res.Degraded {
				ready = false
			}
		}
		results = append(results, res)
	}
	w.Header().Set("Content-Type", "application/json")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ready": ready, "checks": results})
}

func (s *Server) list(ctx context.Context) []ProjectStatus {
	ps := s.opts.Projects(ctx)
	for i := range ps {
		// Action is Postern's own advice (package advice), not a text from elsewhere: scrubbing
		// would take "password: postern project update ..." for a password.
		ps[i].Reason, ps[i].LastError = secret.Scrub(ps[i].Reason), secret.Scrub(ps[i].LastError)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	return ps
}

func (s *Server) projectsJSON(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"projects": s.list(r.Context())})
}
