// Package admin is Postern's HTTP side for operators and monitoring: liveness (/healthz),
// readiness (/readyz), Prometheus metrics (/metrics) and the status of every project
// (/status as HTML, /api/v1/projects as JSON), and, when configured, the project API that reads and
// writes projects (/api/v1/projects/{name}, see api.go). It listens on loopback only.
//
//  1. New takes the checks that decide readiness, the function that lists project status, and the
//     store and bearer token of the project API.
//  2. Handler routes the requests; Serve runs it on a listener until ctx ends.
//  3. The status page shows state, with what to do next for each problem. Only the project API
//     writes, and only with its bearer token.
package admin

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
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

// ProjectStatus is one row of the status page.
type ProjectStatus struct {
	Name      string    `json:"name"`
	Enabled   bool      `json:"enabled"`
	Auth      string    `json:"auth"`
	Upstream  string    `json:"upstream"`
	Senders   []string  `json:"senders"`
	State     string    `json:"state"`            // ok, disabled, needs_reauth, unhealthy
	Reason    string    `json:"reason,omitempty"` // why, in the provider's or upstream's words
	Action    string    `json:"action,omitempty"` // what to do next
	Expiry    time.Time `json:"token_expiry,omitzero"`
	SignInURL string    `json:"sign_in_url,omitempty"`
}

// Options configures the admin server. The zero value serves health endpoints only.
type Options struct {
	Logger *slog.Logger
	// Version is the running Postern's version, shown on the status page. Empty shows none.
	Version  string
	Registry *prometheus.Registry                  // nil: no /metrics
	Checks   []Check                               // readiness
	Projects func(context.Context) []ProjectStatus // nil: no project status
	// Extra lets other packages add routes (the OAuth sign-in pages).
	Extra map[string]http.Handler
	// API turns the project API on. nil: its routes answer 404 saying how to turn it on.
	API *APIOptions
}

// Server is the admin HTTP server.
type Server struct {
	opts Options
	mux  *http.ServeMux
}

// New builds the server.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	if opts.Registry != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	}
	if opts.Projects != nil {
		s.mux.HandleFunc("GET /api/v1/projects", s.projectsJSON)
		s.mux.HandleFunc("GET /status", s.statusPage)
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
		api = &projectAPI{st: a.Store, token: sha256.Sum256([]byte(a.Token.Reveal())), log: opts.Logger}
	}
	api.routes(s.mux)
	for pattern, h := range opts.Extra {
		s.mux.Handle(pattern, h)
	}
	return s
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Serve runs the server on l until ctx ends, then shuts it down within a few seconds.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(l)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
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
	results := make([]checkResult, 0, len(s.opts.Checks))
	for _, c := range s.opts.Checks {
		res := checkResult{Name: c.Name, OK: true}
		if err := c.Func(ctx); err != nil {
			res.OK = false
			res.Error = err.Error()
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
	sort.Slice(ps, func(i, j int) bool { return ps[i].Name < ps[j].Name })
	return ps
}

func (s *Server) projectsJSON(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"projects": s.list(r.Context())})
}

var statusTmpl = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Postern status</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.ok{color:#075}.bad{color:#a00}</style></head><body>
<h1>Postern{{with .Version}} <small>{{.}}</small>{{end}}</h1>
<table><tr><th>project</th><th>auth</th><th>upstream</th><th>senders</th><th>state</th><th>what to do</th></tr>
{{range .Projects}}<tr><td>{{.Name}}</td><td>{{.Auth}}</td><td>{{.Upstream}}</td>
<td>{{range .Senders}}{{.}}<br>{{end}}</td>
<td class="{{if eq .State "ok"}}ok{{else}}bad{{end}}">{{.State}}{{if .Reason}}<br><small>{{.Reason}}</small>{{end}}</td>
<td>{{.Action}}{{if .SignInURL}}<br><a href="{{.SignInURL}}">sign in</a>{{end}}</td></tr>
{{else}}<tr><td colspan="6">No projects yet: add one with <code>postern project add</code>.</td></tr>{{end}}
</table></body></html>
`))

func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	page := struct {
		Version  string
		Projects []ProjectStatus
	}{s.opts.Version, s.list(r.Context())}
	if err := statusTmpl.Execute(w, page); err != nil {
		s.opts.Logger.Warn("rendering status page", "err", err)
	}
}
