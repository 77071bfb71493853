package sidecar

import (
	"reflect"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/config"
)

func TestReloadSplitsLiveFromRestartKeys(t *testing.T) {
	old := config.Default()
	next := config.Default()
	next.Log.Level = "debug"
	next.Limits.RateWait = time.Minute
	next.Listen.LMTP = "/run/postern/other.sock"
	next.Upstream.DialTimeout = time.Second
	changed, err := changedKeys(old, next)
	if err != nil {
		t.Fatal(err)
	}
	applied, restart := splitReload(changed)
	if want := []string{"limits.rate_wait", "log.level"}; !reflect.DeepEqual(applied, want) {
		t.Errorf("applied %v, want %v", applied, want)
	}
	if want := []string{"listen.lmtp", "upstream.dial_timeout"}; !reflect.DeepEqual(restart, want) {
		t.Errorf("needs restart %v, want %v", restart, want)
	}
	if changed, _ := changedKeys(old, config.Default()); len(changed) != 0 {
		t.Errorf("the same configuration changed %v", changed)
	}
}
