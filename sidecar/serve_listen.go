package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/milter"
	"github.com/postern/postern/sidecar/smtpd"
	"github.com/postern/postern/sidecar/socketmap"
)

// newMailServer builds the LMTP/SMTP server Postfix delivers to, signing in through the parts.
func newMailServer(cfg *config.Config, dir *directory.Directory, parts *Parts, ph *projectHealth, log *slog.Logger) (*smtpd.Server, error) {
	mail, err := smtpd.New(smtpd.Options{
		Resolver:        dir,
		Credentials:     parts.Credentials,
		Upstreams:       parts.Pools,
		Logger:          log.With("component", "smtpd"),
		Hostname:        cfg.Upstream.HeloName,
		MaxMessageBytes: cfg.Limits.MaxMessageBytes,
		MaxRecipients:   cfg.Limits.MaxRecipients,
		RateWait:        cfg.Limits.RateWait,
		Limiter:         parts.Limits,
		ReadTimeout:     cfg.SMTPD.CommandTimeout,
		DataTimeout:     cfg.SMTPD.DataTimeout,
		Health:          ph.tracker,
	})
	if err != nil {
		return nil, fmt.Errorf("configuring the mail server: %w", err)
	}
	return mail, nil
}

// newLookups builds the socketmap server that tells Postfix which senders Postern serves.
func newLookups(cfg *config.Config, dir *directory.Directory, log *slog.Logger) *socketmap.Server {
	return &socketmap.Server{
		Lookup: socketmap.Senders{Resolver: dir, Transport: cfg.Transport}.Lookup,
		Logger: log.With("component", "socketmap"),
	}
}

// newMilter builds the milter, or returns nil when no milter listener is configured.
func newMilter(cfg *config.Config, dir *directory.Directory, parts *Parts, ph *projectHealth, log *slog.Logger) (*milter.Server, error) {
	if cfg.Listen.Milter == "" {
		return nil, nil
	}
	mil, err := milter.New(milter.Options{
		Resolver:       dir,
		Domains:        dir,
		IsNoProject:    func(err error) bool { return errors.Is(err, directory.ErrNoProject) },
		IsUnavailable:  func(err error) bool { return errors.Is(err, directory.ErrUnavailable) },
		Credentials:    ph.milterState(parts.Credentials),
		Logger:         log.With("component", "milter"),
		IdleTimeout:    cfg.Milter.IdleTimeout,
		PacketTimeout:  cfg.Milter.PacketTimeout,
		MaxHeaderBytes: cfg.Milter.MaxHeaderBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("configuring the milter: %w", err)
	}
	return mil, nil
}

// listeners opens Serve's listeners (step 4) and collects the servers to run on them.
type listeners struct {
	cfg     *config.Config
	mode    fs.FileMode
	max     config.MaxConnections
	coll    *collector // counts each listener's connections
	log     *slog.Logger
	servers []func(context.Context) error
}

// newListeners prepares the listeners of cfg: the unix sockets' file mode, and a file
// descriptor limit raised for every connection allowed.
func newListeners(cfg *config.Config, coll *collector, log *slog.Logger) (*listeners, error) {
	mode, err := cfg.Listen.SocketFileMode()
	if err != nil {
		return nil, err
	}
	raiseFileLimit(log, fileLimitNeeded(cfg.Listen))
	return &listeners{cfg: cfg, mode: mode, max: cfg.Listen.MaxConnections, coll: coll, log: log}, nil
}

// open listens on addr (nothing when addr is empty), at most maxConns connections at a time, and
// adds serve on it to the servers.
func (ls *listeners) open(name, addr string, maxConns int, serve func(context.Context, net.Listener) error) error {
	if addr == "" {
		return nil
	}
	nl, err := listenAdmin(name, addr, ls.cfg, ls.mode)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	l := guardListener(nl, name, maxConns, ls.log.With("component", "listen"))
	ls.coll.listeners = append(ls.coll.listeners, l)
	ls.log.Info("listening", "server", name, "addr", addr, "max_connections", maxConns)
	ls.servers = append(ls.servers, func(ctx context.Context) error {
		if err := serve(ctx, l); err != nil {
			return fmt.Errorf("%s on %s: %w", name, addr, err)
		}
		return nil
	})
	return nil
}
