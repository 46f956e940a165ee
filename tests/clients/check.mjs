// What every check script shares: a bound on each step, a line per check, the exit.
export const within = (promise, what) =>
  Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`no answer to ${what} in 5 s`)), 5000))])

let failures = 0
export const check = (what, ok, detail = '') => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${ok ? '' : ` ${detail}`}`)
  if (!ok) failures++
}

// Print the verdict ("all passed" is what the Rust side looks for) and exit with it.
export const finish = () => {
  console.log(failures ? `${failures} FAILED` : 'all passed')
  process.exit(failures ? 1 : 0)
}
