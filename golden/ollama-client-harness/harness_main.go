// Harness: calls Ollama's own (*Client).do or .stream once and prints what the
// error's Error() returns, as Ollama's CLI would print it, as one JSON line.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/envconfig"
)

func main() {
	call, method, path := os.Args[1], os.Args[2], os.Args[3]
	client := api.NewClient(envconfig.Host(), http.DefaultClient)
	var body any
	if len(os.Args) > 4 {
		body = json.RawMessage(os.Args[4])
	}
	var err error
	if call == "do" {
		err = client.Do(context.Background(), method, path, body, nil)
	} else {
		err = client.Stream(context.Background(), method, path, body, func([]byte) error { return nil })
	}
	shown := map[string]string{"call": call, "printed": "", "type": ""}
	if err != nil {
		shown["printed"] = err.Error()
		shown["type"] = fmt.Sprintf("%T", err)
	}
	out, _ := json.Marshal(shown)
	fmt.Println(string(out))
}
