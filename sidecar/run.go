package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/buildinfo"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/milter"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/smtpd"
	"github.com/postern/postern/sidecar/socketmap"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
)

// storeOpenWait is how long Run waits for Vault's sign-in before the first load of the projects.
const storeOpenWait = 2 * time.Second

// Run is Serve without reloads.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	return Serve(ctx, cfg, log, nil)
}

// Serve is `postern serve`: it opens the store, loads the projects, starts every configured
// listener and serves until ctx ends. Shutdown is ordered: the lookup and milter listeners and the
// mail listeners stop accepting (their unix sockets are removed), transactions in flight finish
// (bounded by smtpd.data_timeout), then the upstream connections close, then the store.
//
// Each configuration received from reloads (a SIGHUP; see reload.go) is applied as far as it can
// be while running; the log names what needs a restart.
func Serve(ctx context.Context, cfg *config.Config, log *slog.Logger, reloads <-chan *config.Config) error {
	if errs := cfg.Validate(); len(errs) > 0 {
		return fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
	}
	build := buildinfo.Get()
	log.Info("starting postern", "version", build.Version, "revision", build.Revision, "go", build.GoVersion)
	st, opened, err := openServeStore(ctx, cfg, log.With("component", "store"))
	if err != nil {
		return err
	}
	defer st.Close()

	dir := directory.New(st, directory.Options{Interval: cfg.ReloadInterval, RemovedHold: cfg.Postfix.RemovedHold(), Logger: log.With("component", "directory")})
	// Signing in to Vault takes milliseconds when it answers: give it a moment, so that the first
	// load finds the store open. When it does not answer, serve anyway: lookups answer 4xx, mail
	// waits in Postfix's queue, and the directory tries again soon (directory.Options.RetryMin).
	select {
	case <-opened:
	case <-time.After(storeOpenWait):
	case <-ctx.Done():
	}
	if err := dir.Load(ctx); err != nil {
		// Not fatal: mail for unknown projects gets 4xx until the store answers.
		log.Warn("loading projects failed; retrying in the background, mail waits meanwhile", "err", err)
	}
	parts := NewParts(ctx, cfg, st, log)
	defer parts.Close()
	pools, creds, broker := parts.Pools, parts.Credentials, parts.Broker
	ph, err := newProjectHealth(cfg, dir, log.With("component", "health"))
	if err != nil {
		return err
	}

	// The sign-in pages for OAuth mailboxes, on the admin listener.
	var extraRoutes map[string]http.Handler
	if base := cfg.SignInURL(); base != "" && cfg.Listen.Admin != "" {
		var key []byte
		err := generated(log, cfg.SignIn.KeyFile, "a new sign-in key; sign-in links made before no longer work", func(path string) (err error) {
			key, err = signin.LoadKey(path)
			return err
		})
		if err != nil {
			return err
		}
		pages, err := signin.New(signin.Options{
			Key: key, PublicURL: base, Projects: st, Tokens: st, Grants: broker,
			TestAuth:   ph.checked(parts.SignInCheck),
			HTTPClient: OAuthHTTPClient(cfg),
			Logger:     log.With("component", "signin"),
		})
		if err != nil {
			return fmt.Errorf("configuring the sign-in pages: %w", err)
		}
		extraRoutes = pages.Routes()
		ph.makeLink = func(p project.Project) (string, error) {
			if err := signin.Eligible(p); err != nil {
				return "", err
			}
			return pages.Link(p, cfg.SignIn.LinkTTL)
		}
		log.Info("serving the sign-in pages", "url", base+"/signin", "redirect_uri", pages.RedirectURL())
	}

	mail, err := smtpd.New(smtpd.Options{
		Resolver:        dir,
		Credentials:     creds,
		Upstreams:       pools,
		Logger:          log.With("component", "smtpd"),
		Hostname:        cfg.Upstream.HeloName,
		MaxMessageBytes: cfg.Limits.MaxMessageBytes,
		MaxRecipients:   cfg.Limits.MaxRecipients,
		RateWait:        cfg.Limits.RateWait,
		ReadTimeout:     cfg.SMTPD.CommandTimeout,
		DataTimeout:     cfg.SMTPD.DataTimeout,
		Health:          ph.tracker,
	})
	if err != nil {
		return fmt.Errorf("configuring the mail server: %w", err)
	}

	mode, err := cfg.Listen.SocketFileMode()
	if err != nil {
		return err
	}
	maxConns := cfg.Listen.MaxConnections
	raiseFileLimit(log, fileLimitNeeded(cfg.Listen))
	coll := &collector{dir: dir, pools: pools, broker: broker, mail: mail}
	var servers []func(context.Context) error
	open := func(name, addr string, maxConns int, serve func(context.Context, net.Listener) error) error {
		if addr == "" {
			return nil
		}
		nl, err := listen(addr, cfg.Listen.SocketGroup, mode)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		l := guardListener(nl, name, maxConns, log.With("component", "listen"))
		coll.listeners = append(coll.listeners, l)
		log.Info("listening", "server", name, "addr", addr, "max_connections", maxConns)
		servers = append(servers, func(ctx context.Context) error {
			if err := serve(ctx, l); err != nil {
				return fmt.Errorf("%s on %s: %w", name, addr, err)
			}
			return nil
		})
		return nil
	}

	lookups := &socketmap.Server{
		Lookup: socketmap.Senders{Resolver: dir, Transport: cfg.Transport}.Lookup,
		Logger: log.With("component", "socketmap"),
	}
	var mil *milter.Server
	if cfg.Listen.Milter != "" {
		mil, err = milter.New(milter.Options{
			Resolver:       dir,
			Domains:        dir,
			IsNoProject:    func(err error) bool { return errors.Is(err, directory.ErrNoProject) },
			IsUnavailable:  func(err error) bool { return errors.Is(err, directory.ErrUnavailable) },
			Credentials:    ph.milterState(creds),
			Logger:         log.With("component", "milter"),
			IdleTimeout:    cfg.Milter.IdleTimeout,
			PacketTimeout:  cfg.Milter.PacketTimeout,
			MaxHeaderBytes: cfg.Milter.MaxHeaderBytes,
		})
		if err != nil {
			return fmt.Errorf("configuring the milter: %w", err)
		}
	}
	var api *admin.APIOptions
	if cfg.API.TokenFile != "" {
		var tok secret.Secret
		err := generated(log, cfg.API.TokenFile, "a new API token; give it to the API's clients", func(path string) (err error) {
			tok, err = admin.LoadAPIToken(path)
			return err
		})
		if err != nil {
			return err
		}
		api = &admin.APIOptions{Store: st, Token: tok}
		log.Info("serving the project API", "url", "http://"+cfg.Listen.Admin+"/api/v1/projects/{name}", "token_file", cfg.API.TokenFile)
	}
	var readToken secret.Secret
	if cfg.Listen.Admin != "" && cfg.Admin.ReadTokenFile != "" {
		if readToken, err = admin.LoadToken(cfg.Admin.ReadTokenFile, "the read token file (admin.read_token_file)"); err != nil {
			return err
		}
	}
	if cfg.Debug.Pprof {
		extraRoutes = withProfiler(extraRoutes)
		log.Info("serving Go's profiler", "url", "http://"+cfg.Listen.Admin+"/debug/pprof/")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(coll, buildinfo.Collector(build))
	metrics := ph.register(reg, cfg)
	adm := admin.New(admin.Options{
		Logger:     log.With("component", "admin"),
		Version:    build.Version,
		Registry:   reg,
		Gatherer:   metrics,
		Checks:     readiness(dir, st, broker),
		Projects:   func(ctx context.Context) []admin.ProjectStatus { return ph.status(ctx, dir, broker) },
		SignInLink: ph.adminLink(dir),
		Extra:      extraRoutes,
		API:        api,
		ReadToken:  readToken,
	})

	errs := []error{
		open("lmtp", cfg.Listen.LMTP, maxConns.LMTP, mail.ServeLMTP),
		open("smtp", cfg.Listen.SMTP, maxConns.SMTP, mail.ServeSMTP),
		open("socketmap", cfg.Listen.Socketmap, maxConns.Socketmap, lookups.Serve),
		open("admin", cfg.Listen.Admin, maxConns.Admin, adm.Serve),
	}
	if mil != nil {
		errs = append(errs, open("milter", cfg.Listen.Milter, maxConns.Milter, mil.Serve))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Go(func() { _ = dir.Run(ctx) })
	wg.Go(func() { ph.run(ctx, dir, broker) })
	wg.Go(func() {
		running := *cfg
		for {
			select {
			case <-ctx.Done():
				return
			case next := <-reloads:
				changed, err := changedKeys(&running, next)
				if err != nil {
					log.Error("reloading the configuration", "err", err)
					continue
				}
				applied, restart := splitReload(changed)
				dir.SetInterval(next.ReloadInterval)
				mail.SetRateWait(next.Limits.RateWait)
				running.Log.Level, running.ReloadInterval, running.Limits.RateWait = next.Log.Level, next.ReloadInterval, next.Limits.RateWait
				logReload(log, applied, restart)
			}
		}
	})
	for _, serve := range servers {
		wg.Go(func() {
			if err := serve(ctx); err != nil {
				log.Error("server stopped", "err", err)
				cancel(err)
			}
		})
	}
	log.Info("postern is serving", "version", build.Version, "instance", cfg.Instance, "transport", cfg.Transport, "projects", len(dir.Projects()))
	<-ctx.Done()
	log.Info("shutting down: finishing transactions in flight")
	wg.Wait()
	if err := parts.ClosePools(); err != nil {
		log.Warn("closing upstream connections", "err", err)
	}
	if n := broker.PendingWrites(); n > 0 {
		log.Error("token writes still pending at shutdown; the next start refreshes again", "pending", n)
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	log.Info("stopped")
	return nil
}

// generated loads a generated secret file (the sign-in key, the API token) with load, which makes
// it when it is missing, and then warns that it did. These files hold no mail state: a new
// sign-in key only voids the links made before, a new API token is read from its file by the API's
// clients. The store, which does hold state, is never made here: Run opens it first, and a missing
// store stops Run before this point.
func generated(log *slog.Logger, path, what string, load func(path string) error) error {
	_, statErr := os.Stat(path)
	if err := load(path); err != nil {
		return err
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		log.Warn("created "+what, "path", path)
	}
	return nil
}

// collector exposes what the parts count, read at scrape time.
type collector struct {
	dir       *directory.Directory
	pools     *upstream.Pools
	broker    *token.Broker
	mail      *smtpd.Server
	listeners []*guardedListener // appended to before the servers start
}

var (
	descStoreReads   = prometheus.NewDesc("postern_store_project_reads_total", "Reads of the project list from the store.", nil, nil)
	descProjects     = prometheus.NewDesc("postern_projects", "Projects loaded.", nil, nil)
	descPendingWrite = prometheus.NewDesc("postern_token_pending_writes", "Refreshed tokens not yet written to the store.", nil, nil)
	descRefreshWaits = prometheus.NewDesc("postern_token_refresh_waits_total", "Deliveries that waited for an OAuth token refresh.", nil, nil)
	descWaiting      = prometheus.NewDesc("postern_token_refresh_waiting", "Deliveries waiting for an OAuth token refresh now.", nil, nil)
	descConns        = prometheus.NewDesc("postern_upstream_connections", "Upstream connections by state.", []string{"project", "state"}, nil)
	descDials        = prometheus.NewDesc("postern_upstream_dials_total", "Upstream connections opened.", []string{"project"}, nil)
	descAuthFail     = prometheus.NewDesc("postern_upstream_auth_failures_total", "Upstream AUTH refusals.", []string{"project"}, nil)
	descUp           = prometheus.NewDesc("postern_upstream_up", "0 while a project's upstream is considered down.", []string{"project"}, nil)
	descTokenOK      = prometheus.NewDesc("postern_token_ok", "1 when an OAuth project's grant works, 0 when it needs re-authorisation.", []string{"project"}, nil)
	descSessions     = prometheus.NewDesc("postern_sessions_total", "Connections Postfix opened to deliver to Postern (LMTP and SMTP).", nil, nil)
	descListenConns  = prometheus.NewDesc("postern_listener_connections", "Connections open on each listener.", []string{"listener"}, nil)
	descListenMax    = prometheus.NewDesc("postern_listener_max_connections", "The cap on connections open on each listener (listen.max_connections).", []string{"listener"}, nil)
	descListenFull   = prometheus.NewDesc("postern_listener_full_total", "Times a listener reached its cap; new connections then wait until one closes.", []string{"listener"}, nil)
	descAcceptErrors = prometheus.NewDesc("postern_listener_accept_errors_total", "Failed accepts (such as running out of file descriptors), retried after a backoff.", []string{"listener"}, nil)
	descRecipients   = prometheus.NewDesc("postern_recipients_total", "Recipients by what Postfix heard: delivered, deferred (4xx, retried) or refused (5xx, returned to the sender).", []string{"project", "outcome"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descStoreReads, prometheus.CounterValue, float64(c.dir.StoreReads()))
	for _, l := range c.listeners {
		ch <- prometheus.MustNewConstMetric(descListenConns, prometheus.GaugeValue, float64(l.open()), l.name)
		ch <- prometheus.MustNewConstMetric(descListenMax, prometheus.GaugeValue, float64(l.max), l.name)
		ch <- prometheus.MustNewConstMetric(descListenFull, prometheus.CounterValue, float64(l.full.Load()), l.name)
		ch <- prometheus.MustNewConstMetric(descAcceptErrors, prometheus.CounterValue, float64(l.failures.Load()), l.name)
	}
	projects := c.dir.Projects()
	ch <- prometheus.MustNewConstMetric(descProjects, prometheus.GaugeValue, float64(len(projects)))
	ch <- prometheus.MustNewConstMetric(descPendingWrite, prometheus.GaugeValue, float64(c.broker.PendingWrites()))
	ch <- prometheus.MustNewConstMetric(descRefreshWaits, prometheus.CounterValue, float64(c.broker.RefreshWaits()))
	ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(c.broker.Waiting()))
	ms := c.mail.Stats()
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.CounterValue, float64(ms.Sessions))
	for name, o := range ms.Recipients {
		ch <- prometheus.MustNewConstMetric(descRecipients, prometheus.CounterValue, float64(o.Delivered), name, "delivered")
		ch <- prometheus.MustNewConstMetric(descRecipients, prometheus.CounterValue, float64(o.Deferred), name, "deferred")
		ch <- prometheus.MustNewConstMetric(descRecipients, prometheus.CounterValue, float64(o.Refused), name, "refused")
	}
	now := time.Now()
	for _, s := range c.pools.Stats() {
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(s.Idle), s.Project, "idle")
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(s.InUse), s.Project, "in_use")
		ch <- prometheus.MustNewConstMetric(descDials, prometheus.CounterValue, float64(s.Dials), s.Project)
		ch <- prometheus.MustNewConstMetric(descAuthFail, prometheus.CounterValue, float64(s.AuthFailures), s.Project)
		up := 1.0
		if s.DownUntil.After(now) {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, s.Project)
	}
	for _, p := range projects {
		if p.Auth.Type != project.AuthOAuth2 {
			continue
		}
		ok := 1.0
		if strings.EqualFold(string(c.broker.Status(p.Name).State), string(project.TokenNeedsReauth)) {
			ok = 0
		}
		ch <- prometheus.MustNewConstMetric(descTokenOK, prometheus.GaugeValue, ok, p.Name)
	}
}

// readiness: not ready until the projects are loaded; degraded (still ready, mail still flows with
// cached credentials) while the store is unreachable or refreshed tokens wait to be written.
func readiness(dir *directory.Directory, st store.Store, broker *token.Broker) []admin.Check {
	return []admin.Check{
		{Name: "projects", Func: func(context.Context) error {
			switch ok, why := dir.Ready(); {
			case !ok:
				return errors.New(why)
			case why != "":
				return fmt.Errorf("%s: %w", why, admin.ErrDegraded)
			}
			return nil
		}},
		{Name: "store", Func: func(context.Context) error {
			h, ok := st.(interface{ Healthy() error })
			if !ok {
				return nil
			}
			if err := h.Healthy(); err != nil {
				return fmt.Errorf("%w: %w", err, admin.ErrDegraded)
			}
			return nil
		}},
		{Name: "token_writes", Func: func(context.Context) error {
			if n := broker.PendingWrites(); n > 0 {
				return fmt.Errorf("%d refreshed token(s) wait to be written to the store: %w", n, admin.ErrDegraded)
			}
			return nil
		}},
	}
}
