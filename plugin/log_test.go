package plugin

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestNewLoggerSpeaksHCLogJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		level slog.Level
		want  string
	}{
		{name: "trace", level: levelTrace, want: "trace"},
		{name: "debug", level: slog.LevelDebug, want: "debug"},
		{name: "info", level: slog.LevelInfo, want: "info"},
		{name: "warn", level: slog.LevelWarn, want: "warn"},
		{name: "error", level: slog.LevelError, want: "error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			newHCLogJSONLogger(&buf, levelTrace).Log(t.Context(), tc.level, "hello", "project", "acme")
			var line map[string]any
			if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
				t.Fatalf("not JSON: %v: %s", err, buf.String())
			}
			if line["@message"] != "hello" || line["@level"] != tc.want || line["project"] != "acme" {
				t.Errorf("line = %v", line)
			}
			// go-plugin's host parses the timestamp with this layout and drops the line otherwise.
			ts, _ := line["@timestamp"].(string)
			if _, err := time.Parse("2006-01-02T15:04:05.000000Z07:00", ts); err != nil {
				t.Errorf("@timestamp %q: %v", ts, err)
			}
			if hclog.LevelFromString(tc.want) == hclog.NoLevel {
				t.Errorf("hclog does not know level %q", tc.want)
			}
		})
	}
}

func TestHCLogAdapter(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := newHCLogAdapter(log, "provider").Named("example").With("pid", 42)

	if got := a.GetLevel(); got != hclog.Debug {
		t.Errorf("GetLevel = %v, want debug", got)
	}
	if a.IsTrace() || !a.IsDebug() {
		t.Errorf("IsTrace=%v IsDebug=%v, want false true", a.IsTrace(), a.IsDebug())
	}
	a.Trace("dropped")
	a.Warn("careful", "project", "acme")

	out := buf.String()
	if strings.Contains(out, "dropped") {
		t.Errorf("trace line passed a debug logger: %s", out)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &line); err != nil {
		t.Fatalf("not one JSON line: %v: %s", err, out)
	}
	if line["level"] != "WARN" || line["msg"] != "careful" || line["logger"] != "provider.example" ||
		line["pid"] != float64(42) || line["project"] != "acme" {
		t.Errorf("line = %v", line)
	}
}
