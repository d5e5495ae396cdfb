/** The log's onAppend / onDrop subscribers: a listener that throws is reported, never fatal to the log. */
export class Listeners<T> {
  readonly #what: string;
  readonly #set = new Set<(arg: T) => void>();

  /** `what`: the subscribe method's name, for the warning when a listener throws. */
  constructor(what: string) {
    this.#what = what;
  }

  /** Subscribe; returns the unsubscribe function. The same function added twice is called twice. */
  add(listener: (arg: T) => void): () => void {
    const l = (arg: T): void => listener(arg);
    this.#set.add(l);
    return () => {
      this.#set.delete(l);
    };
  }

  emit(arg: T): void {
    for (const l of this.#set) {
      try {
        l(arg);
      } catch (err) {
        process.emitWarning(
          `kedge log: ${this.#what} listener threw: ${(err as Error)?.message ?? err}`,
        );
      }
    }
  }

  clear(): void {
    this.#set.clear();
  }
}
