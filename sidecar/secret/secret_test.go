package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretNeverPrints(t *testing.T) {
	t.Parallel()
	const value = "hunter2-very-secret"
	s := New(value)
	type holder struct {
		Password Secret
	}
	h := holder{Password: s}

	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("x", "password", s, "holder", h)
	js, _ := json.Marshal(h)

	outputs := map[string]string{
		"%v": fmt.Sprintf("%v", s),
		//lint:ignore S1025 the test is of the %s verb itself
		"%s":   fmt.Sprintf("%s", s),
		"%+v":  fmt.Sprintf("%+v", h),
		"%#v":  fmt.Sprintf("%#v", h),
		"json": string(js),
		"slog": logs.String(),
		"err":  fmt.Errorf("auth with %v failed", s).Error(),
	}
	for name, out := range outputs {
		if strings.Contains(out, value) {
			t.Errorf("%s leaks the secret: %s", name, out)
		}
	}
	if s.Reveal() != value {
		t.Fatalf("Reveal() = %q", s.Reveal())
	}
	if New("").String() != "" || !New("").IsZero() {
		t.Fatal("the empty secret should print empty and be zero")
	}
}
