// Rendered on every request, so the page proves the server runs, not a file.
export const dynamic = 'force-dynamic';

export default function Home() {
  return <p>hello from next, pid {process.pid}</p>;
}
