package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

const healthcheckAbout = `
Ask the running Postern whether it is ready: GET /readyz on its admin listener (listen.admin).
The exit code is 0 when it answers 200, 1 otherwise. For container health checks, where the image
has no HTTP client: HEALTHCHECK CMD ["postern", "healthcheck"].`

// healthcheckTimeout bounds the whole request; /readyz itself gives its checks 5s.
const healthcheckTimeout = 8 * time.Second

func runHealthcheck(ctx context.Context, a *App, args []string) int {
	fs := a.newFlagSet("healthcheck", "", healthcheckAbout)
	load := a.configFlag(fs)
	if _, code, ok := a.parse(fs, args, 0, 0); !ok {
		return code
	}
	cfg, _, ok := load()
	if !ok {
		return ExitFail
	}
	if cfg.Listen.Admin == "" {
		fmt.Fprintln(a.Stderr, "postern healthcheck: listen.admin is off: nothing to ask")
		return ExitFail
	}
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()
	url := "http://" + cfg.Listen.Admin + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern healthcheck: %v\n", err)
		return ExitFail
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(a.Stderr, "postern healthcheck: %v\n", err)
		return ExitFail
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(a.Stderr, "postern healthcheck: not ready: %s %s\n", resp.Status, body)
		return ExitFail
	}
	fmt.Fprintf(a.Stdout, "ready: %s\n", body)
	return ExitOK
}
