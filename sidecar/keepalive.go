package sidecar

import (
	"context"
	"log/slog"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/keepalive"
	"github.com/postern/postern/sidecar/store"
	"github.com/postern/postern/sidecar/token"
)

// keepGrantsAlive returns the loop that refreshes idle OAuth grants (package keepalive) until ctx
// ends, or nil when tokens.keepalive_interval is 0.
func keepGrantsAlive(cfg *config.Config, dir *directory.Directory, st store.Tokens, broker *token.Broker, log *slog.Logger) func(context.Context) {
	if cfg.Tokens.KeepaliveInterval <= 0 {
		log.Info("keeping idle OAuth grants alive is off (tokens.keepalive_interval: 0)")
		return nil
	}
	k, err := keepalive.New(keepalive.Options{
		Projects: dir.Projects, Tokens: st, Refresher: broker,
		Interval: cfg.Tokens.KeepaliveInterval, Logger: log,
	})
	if err != nil {
		log.Error("keeping idle OAuth grants alive is off", "err", err)
		return nil
	}
	return k.Run
}
