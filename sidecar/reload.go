package sidecar

import (
	"fmt"
	"log/slog"
	"reflect"
	"slices"

	"go.yaml.in/yaml/v3"

	"github.com/postern/postern/sidecar/config"
)

// A reload (SIGHUP to `postern serve`) reads the configuration file again. What can change while
// Postern runs changes at once; the rest keeps its running value, and the log names each such key
// so that the operator knows a restart is needed for it:
//
//  1. the command (cli) reads and validates the file; an invalid file changes nothing, and its
//     problems are logged;
//  2. it sets the log level (the logger's slog.LevelVar) and hands the new configuration to Serve;
//  3. Serve compares it with the running one key by key (changedKeys) and applies the keys in
//     liveKeys to the running parts.

// liveKeys are the configuration keys a reload applies while Postern runs. Every other key
// (listeners, store, upstream timeouts, the sign-in and API settings, ...) is read at start only.
var liveKeys = []string{"log.level", "reload_interval", "limits.rate_wait"}

// changedKeys returns the dotted keys (as in the file: "limits.rate_wait") whose values differ
// between old and new, sorted.
func changedKeys(old, new *config.Config) ([]string, error) {
	a, err := flatten(old)
	if err != nil {
		return nil, err
	}
	b, err := flatten(new)
	if err != nil {
		return nil, err
	}
	var keys []string
	for k, v := range a {
		if w, ok := b[k]; !ok || !reflect.DeepEqual(v, w) {
			keys = append(keys, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil
}

// flatten is cfg as its YAML keys, nested mappings joined with dots.
func flatten(cfg *config.Config) (map[string]any, error) {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("comparing configurations: %w", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("comparing configurations: %w", err)
	}
	out := map[string]any{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if mm, ok := v.(map[string]any); ok && len(mm) > 0 {
			for k, vv := range mm {
				key := k
				if prefix != "" {
					key = prefix + "." + k
				}
				walk(key, vv)
			}
			return
		}
		out[prefix] = v
	}
	walk("", m)
	return out, nil
}

// splitReload sorts the changed keys into those a reload applies and those that need a restart.
// A key needs a restart when it is, or lies under, no key of liveKeys.
func splitReload(changed []string) (applied, restart []string) {
	for _, k := range changed {
		if slices.Contains(liveKeys, k) {
			applied = append(applied, k)
		} else {
			restart = append(restart, k)
		}
	}
	return applied, restart
}

// logReload says what a reload changed.
func logReload(log *slog.Logger, applied, restart []string) {
	switch {
	case len(applied) == 0 && len(restart) == 0:
		log.Info("configuration reloaded: nothing changed")
	case len(restart) == 0:
		log.Info("configuration reloaded", "applied", applied)
	default:
		log.Warn("configuration reloaded; some changes need a restart of postern serve and are not in effect",
			"applied", applied, "needs_restart", restart)
	}
}
