package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/buildinfo"
	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/signin"
)

// signInPages returns the routes of the sign-in pages for OAuth mailboxes, served on the admin
// listener or on their own (listen.signin), or nil when cfg asks for none.
func signInPages(cfg *config.Config, parts *Parts, ph *projectHealth, log *slog.Logger) (map[string]http.Handler, error) {
	base := cfg.SignInURL()
	if base == "" || cfg.SignInAddr() == "" {
		return nil, nil
	}
	var key []byte
	err := generated(log, cfg.SignIn.KeyFile, "a new sign-in key; sign-in links made before no longer work", func(path string) (err error) {
		key, err = signin.LoadKey(path)
		return err
	})
	if err != nil {
		return nil, err
	}
	pages, err := signin.New(signin.Options{
		Key: key, PublicURL: base, Projects: parts.Store, Tokens: parts.Store, Grants: parts.Broker,
		TestAuth:   ph.checked(parts.SignInCheck),
		HTTPClient: OAuthHTTPClient(cfg),
		Logger:     log.With("component", "signin"),
	})
	if err != nil {
		return nil, fmt.Errorf("configuring the sign-in pages: %w", err)
	}
	ph.makeLink = func(p project.Project) (string, error) {
		if err := signin.Eligible(p); err != nil {
			return "", err
		}
		return pages.Link(p, cfg.SignIn.LinkTTL)
	}
	log.Info("serving the sign-in pages", "url", base+"/signin", "redirect_uri", pages.RedirectURL())
	return pages.Routes(), nil
}

// newAdmin builds the admin listener's server (TLS when admin.tls is set): health checks, the
// status page, metrics from coll, the project API and the read token when configured, Go's
// profiler (behind the token) when asked for, and extraRoutes (the sign-in pages) unless they have
// their own listener (listen.signin), whose server it returns too.
func newAdmin(cfg *config.Config, build buildinfo.Info, dir *directory.Directory, parts *Parts, ph *projectHealth, coll *collector, extraRoutes map[string]http.Handler, log *slog.Logger) (*admin.Server, *admin.Server, error) {
	var api *admin.APIOptions
	if cfg.API.TokenFile != "" {
		var tok secret.Secret
		err := generated(log, cfg.API.TokenFile, "a new API token; give it to the API's clients", func(path string) (err error) {
			tok, err = admin.LoadAPIToken(path)
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		api = &admin.APIOptions{Store: parts.Store, Token: tok}
		log.Info("serving the project API", "url", "http://"+cfg.Listen.Admin+"/api/v1/projects/{name}", "token_file", cfg.API.TokenFile)
	}
	adminTLS, err := adminTLSConfig(cfg, log)
	if err != nil {
		return nil, nil, err
	}
	var readToken secret.Secret
	if cfg.Listen.Admin != "" && cfg.Admin.ReadTokenFile != "" {
		if readToken, err = admin.LoadToken(cfg.Admin.ReadTokenFile, "the read token file (admin.read_token_file)"); err != nil {
			return nil, nil, err
		}
	}
	var protected map[string]http.Handler
	if cfg.Debug.Pprof {
		protected = withProfiler(nil)
		log.Info("serving Go's profiler", "url", "http://"+cfg.Listen.Admin+"/debug/pprof/")
	}
	signInRoutes := map[string]http.Handler(nil)
	if cfg.Listen.SignIn != "" {
		signInRoutes, extraRoutes = extraRoutes, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(coll, buildinfo.Collector(build))
	metrics := ph.register(reg, cfg)
	adm := admin.New(admin.Options{
		Logger:   log.With("component", "admin"),
		Version:  build.Version,
		Registry: reg,
		Gatherer: metrics,
		Checks:   readiness(dir, parts.Store, parts.Broker),
		Projects: func(ctx context.Context) []admin.ProjectStatus {
			return ph.status(ctx, dir, parts.Broker, parts.Limits)
		},
		SignInLink: ph.adminLink(dir),
		Extra:      extraRoutes,
		Protected:  protected,
		API:        api,
		ReadToken:  readToken,
		TLS:        adminTLS,
	})
	signInServer := admin.NewSignIn(admin.Options{Logger: log.With("component", "signin"), TLS: adminTLS}, signInRoutes)
	return adm, signInServer, nil
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
