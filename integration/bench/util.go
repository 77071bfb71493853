package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/postern/postern/integration/harness"
)

// ProductionReloadInterval is Postern's default reload_interval, used instead of the harness's
// one second so that store reads are counted as in production.
const ProductionReloadInterval = 10 * time.Second

// productionReload sets reload_interval in p's generated config back to Postern's default.
func productionReload(p *harness.Postern) error {
	b, err := os.ReadFile(p.Config)
	if err != nil {
		return fmt.Errorf("reading %s: %w", p.Config, err)
	}
	s := string(b)
	if !strings.Contains(s, "\nreload_interval: 1s\n") {
		return fmt.Errorf("%s sets no reload_interval of 1s to replace", p.Config)
	}
	s = strings.Replace(s, "\nreload_interval: 1s\n", fmt.Sprintf("\nreload_interval: %s\n", ProductionReloadInterval), 1)
	if err := os.WriteFile(p.Config, []byte(s), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", p.Config, err)
	}
	return nil
}

// pollUntil calls cond every interval until it holds or ctx ends.
func pollUntil(ctx context.Context, interval time.Duration, cond func() bool) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func sortDurations(ts []time.Duration) { slices.Sort(ts) }
