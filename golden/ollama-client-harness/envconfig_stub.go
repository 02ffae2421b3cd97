// Harness stand-in for ollama/envconfig: only what api/client.go calls.
package envconfig

import (
	"net/url"
	"os"
)

func UseAuth() bool { return os.Getenv("OLLAMA_AUTH") == "1" }

func Host() *url.URL {
	u, err := url.Parse(os.Getenv("OLLAMA_HOST"))
	if err != nil {
		panic(err)
	}
	return u
}
